"""Tenants served, on one small app of the session's cluster with two tenants: every HTTP route and gRPC RPC
answers another tenant's job exactly as a job that does not exist, listings are per tenant, a wrong token
is 401 / UNAUTHENTICATED, both of a tenant's rotation tokens work, the priority bound and the live-jobs
quota are refused naming them."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
import requests

from srserve.client import GenerationFailed, SrserveClient
from srserve.client.grpc_client import make_request

pytestmark = pytest.mark.slow

APP = "tenants"
A_OLD = "tenant-a-old-token-0123456789abcd"
A_NEW = "tenant-a-new-token-0123456789abcd"
B_TOKEN = "tenant-b-token-0123456789abcdefgh"
MISSING = "video_" + "0" * 32
QUICK = {"prompt": "a tenant's video", "num_inference_steps": 2, "switch": "fixed:1"}
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def tenants_app(serving, tiny_config):
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import IngressConfig, PoolConfig, ServingConfig

    tokens = {"SRSERVE_T_A_OLD": A_OLD, "SRSERVE_T_A_NEW": A_NEW, "SRSERVE_T_B": B_TOKEN}
    config = ServingConfig(
        app_name=APP,
        model=tiny_config.model_copy(update={"num_threads": 1}),
        sketch_pool=PoolConfig(ray_actor_options={"num_cpus": 0.25}),
        render_pool=PoolConfig(ray_actor_options={"num_cpus": 0.25}),
        # The tokens reach the ingress replica as a Secret would: its environment.
        ingress=IngressConfig(ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": tokens}}),
        tenants={
            "a": {"token_env": ["SRSERVE_T_A_OLD", "SRSERVE_T_A_NEW"], "max_live_jobs": 2, "max_priority": 2},
            "b": {"token_env": "SRSERVE_T_B"},
        },
    )
    serve.run(build_app(config), name=APP, route_prefix=f"/{APP}")
    yield {"http": f"{serving.http}/{APP}", "grpc": serving.grpc}
    serve.delete(APP)


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _call(method: str, base: str, path: str, token: str, **kw: Any) -> requests.Response:
    return requests.request(method, base + path, headers=_auth(token), timeout=60, **kw)


def _wait(base: str, token: str, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
    """Poll until the job is final (the budget only bounds a hang; no timing is asserted)."""
    end = time.monotonic() + timeout_s
    while True:
        r = _call("GET", base, f"/v1/videos/{job_id}", token)
        assert r.status_code == 200, r.text
        if r.json()["srserve"]["state"] in TERMINAL or time.monotonic() > end:
            return r.json()
        time.sleep(0.05)


def _answer(r: requests.Response) -> tuple[int, Any, str]:
    """Status, body and content type: what tells two answers apart."""
    return r.status_code, r.json() if r.content else None, r.headers.get("content-type", "")


def _as_missing(answer: tuple[int, Any, str], job_id: str) -> tuple[int, Any, str]:
    """The answer with the id asked for written as MISSING (the message names the id it was given)."""
    status, body, ctype = answer
    if body is not None and body.get("error"):
        body = {"error": {**body["error"], "message": body["error"]["message"].replace(job_id, MISSING)}}
    return status, body, ctype


def test_every_http_route_answers_another_tenants_job_as_a_missing_one(tenants_app) -> None:
    base = tenants_app["http"]
    created = _call("POST", base, "/v1/videos", A_OLD, json=QUICK)
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    assert _wait(base, A_OLD, job_id)["status"] == "completed"
    routes = [
        ("GET", "/v1/videos/{id}"),
        ("GET", "/v1/videos/{id}/content"),
        ("GET", "/v1/videos/{id}/events"),
        ("POST", "/v1/videos/{id}/cancel"),
        ("DELETE", "/v1/videos/{id}"),
    ]
    for method, path in routes:
        foreign = _answer(_call(method, base, path.format(id=job_id), B_TOKEN))
        missing = _answer(_call(method, base, path.format(id=MISSING), B_TOKEN))
        assert foreign[0] == 404, (method, path, foreign)
        assert foreign[1]["error"]["param"] == "id"
        assert _as_missing(foreign, job_id) == missing, (method, path)
    # Listing: b sees none of a's jobs, and a's id is no cursor for b (as an unknown id is not).
    listed = _call("GET", base, "/v1/videos", B_TOKEN, params={"limit": 1000}).json()
    assert job_id not in [v["id"] for v in listed["data"]]
    after_foreign = _call("GET", base, "/v1/videos", B_TOKEN, params={"after": job_id}).json()
    after_missing = _call("GET", base, "/v1/videos", B_TOKEN, params={"after": MISSING}).json()
    assert after_foreign == after_missing == {
        "object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False
    }  # fmt: skip
    # The owner's job is untouched by all of that, under either of its tokens.
    for token in (A_OLD, A_NEW):
        assert _call("GET", base, f"/v1/videos/{job_id}", token).json()["status"] == "completed"
        content = _call("GET", base, f"/v1/videos/{job_id}/content", token)
        assert content.status_code == 200 and content.content[4:8] == b"ftyp"
        assert job_id in [v["id"] for v in _call("GET", base, "/v1/videos", token).json()["data"]]
    assert _call("DELETE", base, f"/v1/videos/{job_id}", A_NEW).status_code == 200


def test_every_rpc_answers_another_tenants_job_as_a_missing_one(tenants_app) -> None:
    target = tenants_app["grpc"]
    with (
        SrserveClient(target, APP, token=A_NEW) as a,
        SrserveClient(target, APP, token=B_TOKEN) as b,
    ):
        video = a.generate(make_request("over grpc", num_inference_steps=2, switch="fixed:1"))
        job_id = video.job.id
        assert video.job.state == "completed"
        calls = {
            "GetJob": lambda client, i: client.get_job(i),
            "GetVideo": lambda client, i: client.get_video(i),
            "Cancel": lambda client, i: client.cancel(i),
        }
        for name, call in calls.items():
            answers = []
            for asked in (job_id, MISSING):
                with pytest.raises(GenerationFailed) as info:
                    call(b, asked)
                answers.append((info.value.code, info.value.details.replace(asked, MISSING)))
            assert answers[0] == answers[1] and answers[0][0] == grpc.StatusCode.NOT_FOUND, (name, answers)
        assert job_id not in [j.id for j in b.list_jobs(limit=1000).jobs]
        assert list(b.list_jobs(after=job_id).jobs) == list(b.list_jobs(after=MISSING).jobs) == []
        # The job a made over gRPC is as invisible to b over HTTP.
        r = _call("GET", tenants_app["http"], f"/v1/videos/{job_id}", B_TOKEN)
        assert r.status_code == 404
        assert a.get_job(job_id).state == "completed"
        assert job_id in [j.id for j in a.list_jobs(limit=1000).jobs]


def test_a_wrong_token_is_refused_alike_whoever_it_imitates(tenants_app) -> None:
    base = tenants_app["http"]
    answers = set()
    for header in ({}, _auth("x"), _auth(A_OLD[:-1]), _auth(B_TOKEN + "0"), {"authorization": f"Basic {B_TOKEN}"}):
        r = requests.get(base + "/v1/videos", headers=header, timeout=30)
        answers.add((r.status_code, r.headers["www-authenticate"], r.text))
    assert len(answers) == 1 and next(iter(answers))[0] == 401
    with SrserveClient(tenants_app["grpc"], APP, token="wrong-token-wrong-token") as stranger:
        with pytest.raises(GenerationFailed) as info:
            stranger.list_jobs()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_priority_is_bounded_per_tenant_and_kept(tenants_app) -> None:
    base = tenants_app["http"]
    too_high = _call("POST", base, "/v1/videos", A_OLD, json={**QUICK, "priority": 3})
    assert too_high.status_code == 400
    error = too_high.json()["error"]
    assert error["param"] == "priority" and "between 0 and 2" in error["message"]
    assert _call("POST", base, "/v1/videos", B_TOKEN, json={**QUICK, "priority": 1}).status_code == 400
    kept = _call("POST", base, "/v1/videos", A_OLD, json={**QUICK, "priority": 2})
    assert kept.status_code == 200 and kept.json()["srserve"]["priority"] == 2
    with SrserveClient(tenants_app["grpc"], APP, token=B_TOKEN) as b:
        with pytest.raises(GenerationFailed) as info:
            b.submit(make_request("x", num_inference_steps=2, priority=1))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "priority" in info.value.details
    with SrserveClient(tenants_app["grpc"], APP, token=A_NEW) as a:
        assert a.get_job(kept.json()["id"]).priority == 2
    _wait(base, A_OLD, kept.json()["id"])


def test_max_live_jobs_is_refused_naming_the_quota(tenants_app) -> None:
    base = tenants_app["http"]
    # 200 steps cannot finish while the next request is sent: a's two live jobs fill its quota.
    slow = {"prompt": "slow", "num_inference_steps": 200, "switch": "fixed:100"}
    accepted: list[str] = []
    refused = None
    for _ in range(3):
        r = _call("POST", base, "/v1/videos", A_OLD, json=slow)
        if r.status_code == 429:
            refused = r
            break
        assert r.status_code == 200, r.text
        accepted.append(r.json()["id"])
    assert refused is not None and len(accepted) == 2
    error = refused.json()["error"]
    assert error["code"] == "resource_exhausted" and error["param"] == "max_live_jobs", error
    assert "max_live_jobs" in error["message"] and refused.headers["retry-after"].isdigit()
    with SrserveClient(tenants_app["grpc"], APP, token=A_NEW) as a:
        with pytest.raises(GenerationFailed) as info:
            a.submit(make_request("one more", num_inference_steps=2))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_live_jobs" in info.value.details
    # b's quota is its own.
    other = _call("POST", base, "/v1/videos", B_TOKEN, json=QUICK)
    assert other.status_code == 200
    for job_id in accepted:
        assert _call("POST", base, f"/v1/videos/{job_id}/cancel", A_OLD).status_code == 200
    assert _call("POST", base, "/v1/videos", A_OLD, json=QUICK).status_code == 200  # room again
    _wait(base, B_TOKEN, other.json()["id"])


def test_jobs_wait_in_the_store_and_the_higher_priority_runs_first(tenants_app) -> None:
    """The sketch pool's slots held (as by long jobs): everything new waits in the store, not in Serve's
    router. Freed, the slots go by the queue's rules: a's priority-2 job, though it came last, is in the first
    round of grants, ahead of b's later jobs, which run in their arrival order."""
    import asyncio

    from srserve.serving.control.jobs import PoolBacklog
    from srserve.serving.control.store.database import JobStoreConfig, resolve_dsn
    from srserve.serving.control.store.job_store import JobStore

    base = tenants_app["http"]
    store = JobStore(resolve_dsn(JobStoreConfig(), APP))
    loop = asyncio.new_event_loop()
    holders = [f"video_holder{i}" for i in range(4)]
    limits = (PoolBacklog("sketch", frozenset({"sketch"}), 1000),)
    try:
        capacity = max(1, loop.run_until_complete(store.pool_capacity("sketch")))
        for job_id in holders[:capacity]:  # live jobs of nobody's, holding every sketch slot
            loop.run_until_complete(store.create(job_id, dict(QUICK), 2, None, "test-holder", 600, limits))
            loop.run_until_complete(_hold_slot(store, job_id))
        b_jobs = [_call("POST", base, "/v1/videos", B_TOKEN, json={**QUICK, "seed": i}).json()["id"] for i in range(4)]
        a_job = _call("POST", base, "/v1/videos", A_OLD, json={**QUICK, "priority": 2}).json()["id"]
        for job_id in [*b_jobs, a_job]:  # every one in line for the sketch pool, none granted
            while loop.run_until_complete(_waiting_for(store, job_id)) != "sketch":
                time.sleep(0.05)
        for job_id in holders[:capacity]:
            loop.run_until_complete(store.cancel(job_id))  # the slots free (the orchestrators' tick hands them out)
        jobs = {job_id: _wait(base, B_TOKEN if job_id in b_jobs else A_OLD, job_id) for job_id in [*b_jobs, a_job]}
    finally:
        for job_id in holders:
            loop.run_until_complete(store.forget(job_id))
        loop.run_until_complete(store.close())
        loop.close()
    assert all(job["status"] == "completed" for job in jobs.values()), jobs
    started = {job_id: job["srserve"]["timeline"]["sketch_start"] for job_id, job in jobs.items()}
    b_order = sorted(b_jobs, key=started.__getitem__)
    assert b_order == b_jobs  # b's own jobs in arrival order
    # The first round of grants fills `capacity` slots: a's job and b's first ones; b's next one comes after a's
    # started (its slot frees only when a job of the first round has finished).
    assert started[a_job] < started[b_jobs[capacity - 1]], (capacity, started)


async def _hold_slot(store, job_id: str) -> None:
    async with store._tx() as conn:
        await conn.execute("UPDATE srserve_jobs SET slot_pool = 'sketch' WHERE id = %s", (job_id,))


async def _waiting_for(store, job_id: str) -> str | None:
    async with store._tx() as conn:
        row = await (await conn.execute("SELECT wait_pool FROM srserve_jobs WHERE id = %s", (job_id,))).fetchone()
        return None if row is None else row["wait_pool"]
