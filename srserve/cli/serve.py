"""`srserve serve CONFIG.yaml`: run srserve in the foreground until Ctrl-C (then drain and stop)."""

from __future__ import annotations

import argparse
import signal
import threading


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="deploy srserve on Ray Serve and serve until interrupted")
    p.add_argument("config", help="a Serve config file such as deploy/tiny.yaml (or a bare srserve config)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local cluster)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs of a local cluster (may be fake on CPU)")
    p.add_argument(
        "--metrics-export-port",
        type=int,
        default=None,
        help="a local cluster exports Prometheus metrics at http://HOST:PORT/metrics (docs/operations.md)",
    )
    p.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to let running jobs finish")
    p.add_argument(
        "--port-wait",
        type=float,
        default=60.0,
        help="seconds a local cluster waits for its HTTP and gRPC ports to be free (what a killed earlier run "
        "left takes a moment to go) before refusing to start",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from srserve.serving.launcher import deploy, drain_and_shutdown, ensure_ray, prepare

    # Every check that can run before Ray starts (a StartupError: one line, exit 2, srserve/cli/errors.py).
    startup = prepare(args.config, address=args.address, port_wait_s=args.port_wait)
    spec = startup.spec
    try:
        ensure_ray(args.address, args.num_cpus, args.num_gpus, args.metrics_export_port)
        deploy(spec)
    except BaseException:
        startup.stop_database()
        raise
    print(
        f"srserve is up: HTTP http://{spec.http_host}:{spec.http_port}/v1/videos, "
        f"gRPC {spec.http_host}:{spec.grpc_port} (srserve.v1.VideoGeneration). Ctrl-C to stop.",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("draining running jobs ...", flush=True)
    left = drain_and_shutdown(spec.serving, args.drain_timeout)
    startup.stop_database()
    print(
        "stopped" + (f" ({left} job(s) were still running; they resume at the next start)" if left else ""), flush=True
    )
    return 0
