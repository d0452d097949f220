"""The srserve.v1 gRPC API through Ray Serve's gRPC proxy, on a real port."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from srserve.client import GenerationFailed, SrserveClient
from srserve.client.grpc_client import make_request
from srserve.engine.video import read_mp4
from srserve.serving.proto import video_pb2

pytestmark = pytest.mark.slow
T = TypeVar("T")
TERMINAL = ("completed", "failed", "cancelled")


def assert_refused(exc: GenerationFailed) -> None:
    """A refusal under load: the backlog's RESOURCE_EXHAUSTED, with a message that says why."""
    assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "pool is full" in exc.details, (exc.code, exc.details)


def admitted(call: Callable[[], T], timeout_s: float = 300) -> T:
    """Run a submitting call; a refusal under load is checked (assert_refused), then retried."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except GenerationFailed as exc:
            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > end:
                raise
            assert_refused(exc)
            time.sleep(1.0)


def wait_job(client: SrserveClient, job_id: str, states=TERMINAL, timeout_s: float = 300) -> video_pb2.Job:
    """Poll until the job's state is in `states` (the budget only bounds a hang; no timing is asserted)."""
    end = time.monotonic() + timeout_s
    while True:
        job = client.get_job(job_id)
        if job.state in states or time.monotonic() > end:
            return job
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(serving) -> SrserveClient:
    with SrserveClient(serving.grpc, serving.app_name) as c:
        yield c


def test_generate_streams_progress_then_the_video(client: SrserveClient, tmp_path) -> None:
    events: list = []
    video = admitted(
        lambda: client.generate(
            make_request("a paper boat", num_inference_steps=6, switch="fixed:2", seed=1), on_progress=events.append
        )
    )
    states = [e.state for e in events]
    assert states[0] == "queued"
    order = ["queued", "encoding", "sketching", "handed_off", "rendering", "decoding"]
    assert [s for s in order if s in states] == order
    assert [s for s in states if s in order] == sorted((s for s in states if s in order), key=order.index)
    sketch_steps = [e.step for e in events if e.state == "sketching"]
    render_steps = [e.step for e in events if e.state == "rendering"]
    assert sketch_steps[-1] == 2 and render_steps[-1] == 6
    assert all(a <= b for a, b in zip([e.progress for e in events], [e.progress for e in events][1:], strict=False))
    assert video.job.state == "completed" and video.job.switch_step == 2
    path = tmp_path / "boat.mp4"
    path.write_bytes(video.mp4)
    assert read_mp4(path).shape == (17, 64, 64, 3)


def test_submit_get_list_video(client: SrserveClient) -> None:
    job = admitted(lambda: client.submit(make_request("a windmill", num_inference_steps=4)))
    assert job.id.startswith("video_") and job.state == "queued"
    with pytest.raises(GenerationFailed) as info:
        client.get_video(job.id)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert wait_job(client, job.id).state == "completed"
    assert client.get_video(job.id).mp4[4:8] == b"ftyp"
    page = client.list_jobs(limit=1)
    assert len(page.jobs) == 1 and page.has_more
    asc = client.list_jobs(limit=1000, order="asc")
    assert job.id in [j.id for j in asc.jobs]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "height": 33}, "height"),
        ({"prompt": "x", "num_frames": 8}, "num_frames"),
        ({"prompt": "x", "switch": "fixed:500"}, "switch"),
        ({"prompt": "x", "num_inference_steps": 900}, "num_inference_steps"),
        ({"prompt": "x", "deadline_s": -2.0}, "deadline_s"),
    ],
)
def test_invalid_argument_names_the_field(client: SrserveClient, fields: dict, needle: str) -> None:
    prompt = fields.pop("prompt")
    with pytest.raises(GenerationFailed) as info:
        client.submit(make_request(prompt, **fields))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details


def test_unknown_job_is_not_found(client: SrserveClient) -> None:
    for call in (client.get_job, client.cancel, client.get_video):
        with pytest.raises(GenerationFailed) as info:
            call("video_does_not_exist")
        assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_generate_deadline_and_cancel_statuses(client: SrserveClient, serving) -> None:
    # 200 steps cannot finish within 50 ms on any machine; the job fails wherever the deadline finds it.
    with pytest.raises(GenerationFailed) as info:
        admitted(
            lambda: client.generate(make_request("slow", num_inference_steps=200, switch="fixed:100", deadline_s=0.05))
        )
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    job_ids: list[str] = []
    before = {j.id for j in client.list_jobs(limit=1000).jobs}

    def cancel_once_it_exists() -> None:
        """Cancel the Generate call's job as soon as it is listed, whatever its state by then."""
        with SrserveClient(serving.grpc, serving.app_name) as other:
            end = time.monotonic() + 300
            while time.monotonic() < end:
                fresh = [j for j in other.list_jobs(limit=5).jobs if j.id not in before]
                if fresh:
                    job_ids.append(fresh[0].id)
                    other.cancel(fresh[0].id)
                    return
                time.sleep(0.02)

    canceller = threading.Thread(target=cancel_once_it_exists)
    canceller.start()
    with pytest.raises(GenerationFailed) as info:
        admitted(lambda: client.generate(make_request("to be cancelled", num_inference_steps=200, switch="fixed:200")))
    canceller.join()
    assert info.value.code == grpc.StatusCode.CANCELLED
    assert client.get_job(job_ids[0]).state == "cancelled"


def test_backpressure_is_resource_exhausted(client: SrserveClient) -> None:
    refusals, accepted = [], []
    for _ in range(12):
        try:
            accepted.append(client.submit(make_request("burst", num_inference_steps=12, switch="fixed:10")).id)
        except GenerationFailed as exc:
            refusals.append(exc)
    assert refusals, "the sketch backlog (4) must refuse part of a burst of 12"
    for exc in refusals:
        assert_refused(exc)
    for job_id in accepted:
        assert wait_job(client, job_id).state == "completed"


def test_undecodable_messages_are_invalid_argument(serving) -> None:
    """Serve's proxy forwards the bytes undecoded (api/grpc_servicers.py); the ingress refuses them."""
    metadata = (("application", serving.app_name),)
    with grpc.insecure_channel(serving.grpc) as channel:
        for method in ("Submit", "GetJob", "ListJobs", "Cancel", "GetVideo", "RenderHandoff"):
            call = channel.unary_unary(f"/srserve.v1.VideoGeneration/{method}")
            with pytest.raises(grpc.RpcError) as err:
                call(b"\xff\xff\xff\xfe garbage bytes", metadata=metadata, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.value.details())
            assert "not a valid srserve.v1." in err.value.details()
        stream = channel.unary_stream("/srserve.v1.VideoGeneration/Generate")
        with pytest.raises(grpc.RpcError) as err:
            list(stream(b"\x0a\x05ab", metadata=metadata, timeout=30))  # a truncated string field
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as err:
            check(b"\xff\xff", metadata=metadata, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_switch_past_the_step_count_and_impossible_ids(client: SrserveClient) -> None:
    job = admitted(lambda: client.submit(make_request("all large", num_inference_steps=3, switch="fixed:9")))
    done = wait_job(client, job.id)
    assert done.state == "completed" and done.switch_step == 3  # as over HTTP: the large model runs every step
    with pytest.raises(GenerationFailed) as info:
        client.get_job("video_\x00")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert list(client.list_jobs(after="nope\x00").jobs) == []
    with pytest.raises(GenerationFailed) as info:
        client.submit(make_request("a\x00b"))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "prompt" in info.value.details


def test_health_checking_and_reflection(serving) -> None:
    with grpc.insecure_channel(serving.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), metadata=(("application", serving.app_name),))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "srserve.v1.VideoGeneration" in names


def test_client_cli_writes_the_mp4(serving, tmp_path) -> None:
    out = tmp_path / "cli.mp4"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "srserve.cli.main",
            "client",
            "--target",
            serving.grpc,
            "--prompt",
            "a kite",
            "--steps",
            "4",
            "--switch",
            "fixed:1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "switch step 1 of 4" in run.stdout
    assert read_mp4(out).shape[0] == 17
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "srserve.cli.main",
            "client",
            "--target",
            serving.grpc,
            "--prompt",
            "x",
            "--frames",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "num_frames" in bad.stderr
