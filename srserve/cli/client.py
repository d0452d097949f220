"""`srserve client`: generate a video through a running srserve over gRPC, with a progress bar."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from tqdm import tqdm

from srserve.cli.schedule_flags import add_schedule_arguments
from srserve.client import GenerationFailed, SrserveClient
from srserve.client.grpc_client import make_request
from srserve.serving.config.errors import StartupError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="generate through a running srserve (gRPC)")
    p.add_argument("--target", default="127.0.0.1:9000")
    p.add_argument("--application", default="srserve")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--switch", default="", help="fixed:K, adaptive[...], load[...] (default: the server's)")
    p.add_argument("--cache", default="", help="step caches, e.g. first_block:0.05 or sketch=taylorseer,render=none")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    add_schedule_arguments(p)
    p.add_argument("--deadline", type=float, default=None, help="seconds")
    p.add_argument("--image", default=None, help="input image (PNG, JPEG, WebP) for an image-to-video pair")
    p.add_argument("--lora", default=None, help="a LoRA adapter the server configures: NAME or NAME:SCALE")
    p.add_argument("--out", default="video.mp4")
    p.add_argument("--token", default=os.environ.get("SRSERVE_TOKEN"), help="bearer token (default: $SRSERVE_TOKEN)")
    p.add_argument("--tls-ca", default=None, help="PEM root certificate: connect with TLS (e.g. to a GrpcTlsGateway)")
    p.set_defaults(func=run)


def _read(flag: str, path: str) -> bytes:
    """A file a flag names; one that cannot be read is a start-up error naming the flag."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{flag} {path}: cannot be read ({exc.strerror or exc})") from None


def run(args: argparse.Namespace) -> int:
    credentials = None
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=_read("--tls-ca", args.tls_ca))
    image = _read("--image", args.image) if args.image else None
    request = make_request(
        args.prompt,
        negative_prompt=args.negative_prompt,
        switch=args.switch,
        cache=args.cache,
        num_inference_steps=args.steps,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        seed=args.seed,
        guidance_scale=args.guidance_scale,
        scheduler=args.scheduler,
        timesteps=args.timesteps,
        sigmas=args.sigmas,
        shift=args.shift,
        deadline_s=args.deadline,
        input_reference=image,
        lora=args.lora,
    )
    bar = tqdm(total=100, unit="%", desc="queued", disable=not sys.stderr.isatty())

    def progress(p) -> None:
        bar.set_description(f"{p.state} {p.step}/{p.total}" if p.total else p.state)
        bar.update(p.progress - bar.n)

    with SrserveClient(args.target, args.application, credentials=credentials, token=args.token) as client:
        try:
            video = client.generate(request, on_progress=progress)
        except GenerationFailed as exc:
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return 1
    bar.update(100 - bar.n)
    bar.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(video.mp4)
    job = video.job
    cap = f" (load cap {job.switch_cap}: {job.switch_reason})" if job.switch_reason else ""
    print(f"wrote {out} ({len(video.mp4)} bytes); job {job.id}, switch step {job.switch_step} of {job.num_steps}{cap}")
    return 0
