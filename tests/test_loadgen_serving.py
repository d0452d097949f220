"""The load harness against a running srserve (gRPC and HTTP), `srserve bench`, and the colocated layout."""

from __future__ import annotations

import json
import time

import pytest
import requests

from srserve.engine import GenerationRequest, Role, SRDiffusionEngine
from srserve.loadgen.clients import GrpcTarget, HttpTarget, Rejected, connect
from srserve.loadgen.runner import LoadRunner, unloaded_latency
from srserve.workload.arrivals import ClosedLoop, PoissonArrivals, TraceArrivals
from srserve.workload.mix import RequestClass, RequestMix
from srserve.workload.plan import SloPolicy
from srserve.workload.stats import summarize
from srserve.workload.timeline import MARKS
from tests.serving_helpers import post, wait_done

pytestmark = pytest.mark.slow

STAMPS = MARKS  # every stamp a completed served job carries
MIX = RequestMix(
    classes=[
        RequestClass(name="short", num_inference_steps=4, switch="fixed:1", slo_s=60.0),
        RequestClass(name="longer", num_inference_steps=6, switch="fixed:3", weight=2),
    ]
)


def _refusal_ok(record, api: str) -> bool:
    """A request the backlog refused under load (correct behaviour): RESOURCE_EXHAUSTED / 429 with its message."""
    if record.status != "rejected":
        return False
    assert record.job_id is None and "pool is full" in record.error, record.error
    if api == "http":
        assert '"code":"resource_exhausted"' in record.error.replace(" ", ""), record.error
    return True


def _check_records(records, api: str) -> list:
    """Every request completed or was refused for lack of room; returns the completed ones (at least one)."""
    done = [r for r in records if not _refusal_ok(r, api)]
    assert done and all(r.completed for r in done), [(r.status, r.error) for r in records]
    for r in done:
        assert r.api == api and r.job_id.startswith("video_")
        assert all(k in r.timeline for k in STAMPS), r.timeline
        t = r.timeline
        order = [t[k] for k in ("submitted", "encode_start", "sketch_end", "render_start", "render_end", "finished")]
        assert order == sorted(order)
        assert set(r.replicas) == {"sketch", "render"}
        assert r.switch_step == (1 if r.request_class == "short" else 3)
        assert all(w >= 0 for w in r.queue_waits().values())
    return done


def _unloaded(target, mix: RequestMix, timeout_s: float = 300) -> dict[str, float]:
    """Each class's unloaded latency; a measurement whose request was refused under load is taken again."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            return unloaded_latency(target, mix, runs=1)
        except RuntimeError as exc:  # "no request completed": the one request was refused
            if "no request completed" not in str(exc) or time.monotonic() > end:
                raise
            time.sleep(1.0)


def _wait_idle(serving, timeout_s: float = 300) -> None:
    """Wait until no job is live in the store: an unloaded measurement needs an unloaded server."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        jobs = requests.get(serving.http + "/health", timeout=30).json()["jobs"]
        if not any(n for state, n in jobs.items() if state not in ("completed", "failed", "cancelled")):
            return
        time.sleep(0.2)


def _admitted(target, fields: dict, timeout_s: float = 300):
    """Submit; a refusal under load is checked (its message) and retried."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            return target.submit(fields)
        except Rejected as exc:
            assert "pool is full" in str(exc), exc
            if time.monotonic() > end:
                raise
            time.sleep(1.0)


def test_grpc_open_loop_against_srserve(serving) -> None:
    target = GrpcTarget(serving.grpc, serving.app_name)
    try:
        _wait_idle(serving)
        slo = SloPolicy(scale=3.0, unloaded_s=_unloaded(target, MIX))
        records = LoadRunner(
            target, PoissonArrivals(rate=2.0), MIX, max_requests=6, seed=1, slo=slo, progress=False
        ).run()
    finally:
        target.close()
    done = _check_records(records, "grpc")  # the backlog may refuse some of a Poisson burst: that is correct
    s = summarize(records, gpus=2, replicas_per_pool={"sketch": 1, "render": 2})
    assert s.completed == len(done) and s.completed + s.rejected == 6 and s.throughput_rps > 0
    assert 0 < s.utilisation["sketch"] <= 1 and 0 < s.utilisation["render"] <= 1
    assert s.slo_requests == 6 and s.slo_attainment is not None
    for r in records:  # per-class SLO first, else the scale times the class's unloaded latency
        assert r.slo_s == (60.0 if r.request_class == "short" else pytest.approx(3.0 * slo.unloaded_s["longer"]))


def test_http_closed_loop_against_srserve(serving) -> None:
    target = connect(serving.http)
    assert isinstance(target, HttpTarget)
    try:
        records = LoadRunner(target, ClosedLoop(concurrency=2), MIX, max_requests=4, seed=2, progress=False).run()
    finally:
        target.close()
    done = _check_records(records, "http")
    assert summarize(records).completed == len(done) and len(records) == 4


def test_bad_requests_and_refusals_are_recorded_not_raised(serving, tmp_path) -> None:
    target = GrpcTarget(serving.grpc, serving.app_name)
    trace = tmp_path / "trace.jsonl"  # trace fields reach the server unvalidated
    trace.write_text('{"t": 0, "fields": {"height": 65}}\n{"t": 0.1}\n')
    accepted = []
    try:
        mix = RequestMix.single(num_inference_steps=4, switch="fixed:1")
        records = LoadRunner(target, TraceArrivals(path=str(trace)), mix, progress=False).run()
        assert records[0].status == "error" and "height" in records[0].error
        assert records[1].completed or _refusal_ok(records[1], "grpc"), (records[1].status, records[1].error)
        with pytest.raises(Rejected):  # the sketch pool's backlog is 4 in the session deployment
            for i in range(12):
                accepted.append(
                    target.submit({"prompt": "x", "num_inference_steps": 30, "switch": "fixed:30", "seed": i}).id
                )
    finally:
        for job_id in accepted:
            target.client.cancel(job_id)
        target.close()


def test_bench_cli_writes_report_and_plots(serving, tmp_path) -> None:
    from srserve.cli.main import main

    out = tmp_path / "bench"
    _wait_idle(serving)  # its unloaded runs measure the idle server
    code = main(
        [
            "bench",
            "--target",
            f"grpc://{serving.grpc}",
            "--app",
            serving.app_name,
            "--arrival",
            "closed:2",
            "--requests",
            "3",
            "--steps",
            "4",
            "--switch",
            "fixed:2",
            "--slo-scale",
            "4",
            "--unloaded-runs",
            "1",
            "--gpus",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for record in report["records"]:  # completed, or refused by the backlog under load (with its message)
        assert record["status"] == "completed" or (
            record["status"] == "rejected" and "pool is full" in record["error"]
        ), record
    summary = report["summary"]
    assert summary["completed"] >= 1 and summary["completed"] + summary["rejected"] == 3 and summary["gpus"] == 2
    assert report["summary"]["goodput_per_gpu"] is not None and len(report["records"]) == 3
    for name in ("latency_cdf.png", "utilisation.png", "timeline.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_colocated_layout_serves_the_same_latents(serving, tiny_config) -> None:
    """Both models in one replica (WanPipeline-with-transformer_2 style), beside the session app."""
    from ray import serve

    from srserve.serving.config import DeployFile, PoolConfig, ServingConfig
    from srserve.serving.launcher import deploy

    config = ServingConfig(
        app_name="colocated-test",
        model=tiny_config.model_copy(update={"num_threads": 1}),
        layout="colocated",
        colocated_pool=PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 0.5}),
    )
    deploy(
        DeployFile(
            http_port=serving.spec.http_port,
            grpc_port=serving.spec.grpc_port,
            route_prefix="/colocated-test",
            serving=config,
        )
    )
    fields = {"prompt": "a lighthouse", "num_inference_steps": 5, "switch": "fixed:2", "seed": 7}
    try:
        results = {}
        for app in ("colocated-test", serving.app_name):
            target = GrpcTarget(serving.grpc, app)
            try:
                job = _admitted(target, fields)
                view = target.get(job.id)
                end = time.monotonic() + 300  # bounds a hang only; no timing is asserted
                while not view.terminal and time.monotonic() < end:
                    time.sleep(0.05)
                    view = target.get(job.id)
                results[app] = (view, target.client.get_job(job.id).latents_sha256)
            finally:
                target.close()
        colocated, disaggregated = results["colocated-test"], results[serving.app_name]
        assert colocated[0].state == "completed" and set(colocated[0].replicas) == {"colocated"}
        assert all(k in colocated[0].timeline for k in STAMPS)
        assert colocated[0].switch_step == 2
        assert colocated[1] and colocated[1] == disaggregated[1]  # exact: the same final latents

        # An uploaded handoff: the layout routes its render stage to the colocated pool too.
        engine = SRDiffusionEngine(tiny_config.model_copy(update={"num_threads": 1}), roles={Role.TEXT, Role.SKETCH})
        request = engine.resolve(GenerationRequest(**fields))
        blob = engine.sketch(request, engine.encode(request)).to_bytes()
        base = serving.http + "/colocated-test"
        upload = post(base, "/v1/handoffs", data=blob, headers={"content-type": "application/octet-stream"})
        assert upload.status_code == 200, upload.text
        done = wait_done(base, upload.json()["id"])
        assert done["srserve"]["replicas"].keys() == {"colocated"}, done
        assert done["srserve"]["latents_sha256"] == disaggregated[1]
    finally:
        serve.delete("colocated-test")
