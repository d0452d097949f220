"""Tenants without Ray: the config and its refusals, identification by bearer token (every token compared,
in constant time), token rotation, the job store's per-tenant listing and `max_live_jobs` quota on a real
(embedded) PostgreSQL, the ingress's isolation of every query (another tenant's job answers exactly as a
missing one), the priority bound, and the per-tenant metrics' arithmetic."""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from srserve.engine.request import RequestDefaults
from srserve.serving.api.errors import grpc_status, http_status
from srserve.serving.api.schemas import create_priority, create_request, form_values, parse_create
from srserve.serving.config import ServingConfig
from srserve.serving.config import tenants as tenants_module
from srserve.serving.control.artifacts import ArtifactStoreConfig
from srserve.serving.control.errors import InvalidRequest, JobNotFound, NotReady, QuotaExceeded, ServingError
from srserve.serving.control.jobs import JobState
from srserve.serving.control.pricing.pool_work import estimate_pool_work, measure_stage_times
from srserve.serving.control.store.database import JobStoreConfig
from srserve.serving.control.store.job_store import migrations
from srserve.serving.control.tenants import DEFAULT, DEFAULT_TENANT, PRIORITY_LIMIT, Tenant
from tests.store_helpers import LIMITS, REQUEST, migrated_store

A_TOKEN = "tenant-a-token-0123456789abcdef"
A_NEXT = "tenant-a-next-token-0123456789ab"
B_TOKEN = "tenant-b-token-fedcba9876543210"
TENANTS = {
    "a": {"token_env": ["T_A_TOKEN", "T_A_NEXT"], "max_live_jobs": 2, "max_priority": 3, "weight": 2},
    "b": {"token_env": "T_B_TOKEN"},
}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def env(monkeypatch) -> pytest.MonkeyPatch:
    for var, value in (("T_A_TOKEN", A_TOKEN), ("T_A_NEXT", A_NEXT), ("T_B_TOKEN", B_TOKEN)):
        monkeypatch.setenv(var, value)
    return monkeypatch


# -- config ---------------------------------------------------------------------------------------
def test_tenants_parse_into_their_limits(env) -> None:
    config = ServingConfig(tenants=TENANTS)
    assert config.tenants["b"].env_vars() == ["T_B_TOKEN"]
    tokens = config.tenant_tokens()
    assert not tokens.open
    a = tokens.identify(f"Bearer {A_TOKEN}")
    assert a == Tenant("a", max_live_jobs=2, max_queued_gpu_s=None, max_priority=3, weight=2.0)
    assert tokens.identify(f"Bearer {B_TOKEN}") == Tenant("b")  # unset limits: none; priority 0; weight 1
    assert tokens.max_priority() == 3


@pytest.mark.parametrize(
    ("tenant", "needle"),
    [
        ({"token_env": []}, "at least one environment variable"),
        ({"token_env": "1BAD"}, "not an environment variable name"),
        ({"token_env": ["X", "X"]}, "listed twice"),
        ({"token_env": "X", "max_priority": PRIORITY_LIMIT + 1}, "max_priority"),
        ({"token_env": "X", "max_live_jobs": 0}, "max_live_jobs"),
        ({"token_env": "X", "weight": 0}, "weight"),
        ({"token_env": "X", "token": "inline-secret-in-the-file"}, "token"),  # never a token in the file
    ],
)
def test_a_bad_tenant_is_refused_naming_its_field(tenant: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        ServingConfig(tenants={"a": tenant})


def test_tenant_names_are_plain_words() -> None:
    with pytest.raises(ValidationError):
        ServingConfig(tenants={"a b": {"token_env": "X"}})
    with pytest.raises(ValidationError):
        ServingConfig(tenants={"": {"token_env": "X"}})


def test_auth_and_tenants_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="auth and tenants: set one, not both"):
        ServingConfig(auth={"token_env": "SOME_TOKEN"}, tenants={"a": {"token_env": "X"}})


def test_neither_is_open_and_auth_is_the_one_default_tenant(monkeypatch) -> None:
    open_tokens = ServingConfig().tenant_tokens()
    assert open_tokens.open and open_tokens.tenants == [DEFAULT]
    for header in (None, "", "Bearer anything-at-all-0123456789"):
        assert open_tokens.identify(header) is DEFAULT
    monkeypatch.setenv("ONE_TOKEN", A_TOKEN)
    single = ServingConfig(auth={"token_env": "ONE_TOKEN"}).tenant_tokens()
    assert not single.open
    assert single.identify(f"Bearer {A_TOKEN}") == DEFAULT and DEFAULT.name == DEFAULT_TENANT
    assert single.identify(f"bearer {A_TOKEN}") == DEFAULT
    for bad in (None, "", A_TOKEN, f"Basic {A_TOKEN}", f"Bearer {A_TOKEN}x", "Bearer "):
        assert single.identify(bad) is None


def test_token_resolution_refusals_name_variables_never_tokens(monkeypatch) -> None:
    config = ServingConfig(tenants=TENANTS)
    for var in ("T_A_TOKEN", "T_A_NEXT", "T_B_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("T_B_TOKEN", B_TOKEN)
    with pytest.raises(ValueError, match=r"tenants\.a: none of its token variables \(T_A_TOKEN, T_A_NEXT\) is set"):
        config.tenant_tokens()
    monkeypatch.setenv("T_A_TOKEN", "short")
    with pytest.raises(ValueError, match="T_A_TOKEN holds a token shorter than 16"):
        config.tenant_tokens()
    monkeypatch.setenv("T_A_TOKEN", B_TOKEN)  # b's token given to a as well: whose would it be?
    with pytest.raises(ValueError, match="holds the same token as") as info:
        config.tenant_tokens()
    assert B_TOKEN not in str(info.value)


# -- identification -------------------------------------------------------------------------------
def test_every_token_is_compared_whatever_is_presented(env, monkeypatch) -> None:
    """No early exit: each presented value (right for the first tenant, right for the last, wrong, missing,
    another scheme) costs one compare_digest per configured token, each over equal-length digests."""
    tokens = ServingConfig(tenants=TENANTS).tenant_tokens()
    calls: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(tenants_module.hmac, "compare_digest", counting)
    presented = {
        f"Bearer {A_TOKEN}": "a",
        f"Bearer {A_NEXT}": "a",
        f"Bearer {B_TOKEN}": "b",
        "Bearer wrong-token-wrong-token": None,
        f"Bearer {B_TOKEN[:-1]}": None,  # a prefix of a real token
        "Bearer x": None,  # another length
        None: None,
        f"Basic {A_TOKEN}": None,
    }
    for header, tenant in presented.items():
        calls.clear()
        found = tokens.identify(header)
        assert (found.name if found else None) == tenant, header
        assert len(calls) == 3, (header, calls)  # three tokens configured: all three compared
        assert all(pair == (32, 32) for pair in calls)


def test_token_rotation_both_work_then_removing_one_revokes_it(env) -> None:
    config = ServingConfig(tenants=TENANTS)
    both = config.tenant_tokens()
    assert both.identify(f"Bearer {A_TOKEN}").name == "a"
    assert both.identify(f"Bearer {A_NEXT}").name == "a"
    env.delenv("T_A_TOKEN")  # the old token's variable removed from the Secret, the ingress rolled
    rolled = config.tenant_tokens()
    assert rolled.identify(f"Bearer {A_TOKEN}") is None
    assert rolled.identify(f"Bearer {A_NEXT}").name == "a"
    assert rolled.identify(f"Bearer {B_TOKEN}").name == "b"


# -- the store ------------------------------------------------------------------------------------
A = Tenant("a", max_live_jobs=2, max_priority=3)
B = Tenant("b")


async def _create(store, job_id: str, tenant: Tenant = DEFAULT, priority: int = 0):
    return await store.create(job_id, REQUEST, 20, None, "o1", 30.0, LIMITS, tenant=tenant, priority=priority)


def test_jobs_carry_their_tenant_and_priority(store_dsn: str) -> None:
    async def go():
        store = await migrated_store(store_dsn)
        await _create(store, "j1", A, priority=3)
        await _create(store, "j2")
        got = [await store.get("j1"), await store.get("j2")]
        await store.close()
        return got

    a_job, default_job = run(go())
    assert (a_job.tenant, a_job.priority, a_job.cost_gpu_s) == ("a", 3, None)
    assert (default_job.tenant, default_job.priority) == (DEFAULT_TENANT, 0)
    assert a_job.summary()["priority"] == 3


def test_listing_is_per_tenant_and_pages_within_it(store_dsn: str) -> None:
    async def go():
        store = await migrated_store(store_dsn)
        for i in range(7):  # interleaved: a, b, a, b, ... (a without its quota here)
            await _create(store, f"j{i}", Tenant("a") if i % 2 == 0 else B)
        pages, after = [], None
        while True:
            jobs, more = await store.list_jobs(2, after, "asc", tenant="a")
            pages.append([j.id for j in jobs])
            if not more:
                break
            after = jobs[-1].id
        desc, _ = await store.list_jobs(10, None, "desc", tenant="b")
        foreign_cursor = await store.list_jobs(10, "j1", "asc", tenant="a")  # b's job as a's cursor
        missing_cursor = await store.list_jobs(10, "nope", "asc", tenant="a")
        everyone, _ = await store.list_jobs(10)
        await store.close()
        return pages, [j.id for j in desc], foreign_cursor, missing_cursor, [j.id for j in everyone]

    pages, desc, foreign_cursor, missing_cursor, everyone = run(go())
    assert pages == [["j0", "j2"], ["j4", "j6"]]
    assert desc == ["j5", "j3", "j1"]
    assert foreign_cursor == missing_cursor == ([], False)
    assert everyone == [f"j{i}" for i in range(6, -1, -1)]


def test_max_live_jobs_is_counted_at_admission_and_named(store_dsn: str) -> None:
    async def go():
        store = await migrated_store(store_dsn)
        await _create(store, "a1", A)
        await _create(store, "a2", A)
        with pytest.raises(QuotaExceeded) as info:
            await _create(store, "a3", A)
        await _create(store, "b1", B)  # another tenant's quota is its own
        await store.cancel("a1")  # a finished job frees its place
        await _create(store, "a3", A)
        counts = await store.tenant_counts()
        await store.close()
        return info.value, counts

    refused, counts = run(go())
    assert refused.quota == refused.param == "max_live_jobs"
    assert refused.message.startswith("max_live_jobs: tenant a has 2 unfinished jobs, its limit of 2")
    assert (http_status(refused), grpc_status(refused), refused.code) == (
        429,
        "RESOURCE_EXHAUSTED",
        "resource_exhausted",
    )
    assert counts["a"][JobState.QUEUED.value] == 2 and counts["a"][JobState.CANCELLED.value] == 1
    assert counts["b"][JobState.QUEUED.value] == 1


def test_max_queued_gpu_s_counts_the_unfinished_jobs_predicted_cost(store_dsn: str) -> None:
    """The tenant's unfinished jobs' predicted GPU-seconds plus the new one's, against its limit; unpriced
    jobs (nothing measured yet) count nothing; finishing a job frees its share."""
    budget = Tenant("budget", max_queued_gpu_s=10.0)

    async def go():
        store = await migrated_store(store_dsn)

        async def create(job_id: str, cost: float | None):
            return await store.create(job_id, REQUEST, 20, None, "o1", 30.0, LIMITS, tenant=budget, cost_gpu_s=cost)

        await create("j1", 4.0)
        await create("j2", 6.0)  # exactly at the limit
        with pytest.raises(QuotaExceeded) as info:
            await create("j3", 0.5)
        await create("unpriced", None)
        await store.create("other", REQUEST, 20, None, "o1", 30.0, LIMITS, tenant=B, cost_gpu_s=50.0)
        await store.cancel("j1")
        await create("j3", 4.0)
        stored = await store.get("j3")
        await store.close()
        return info.value, stored

    refused, stored = run(go())
    assert refused.quota == refused.param == "max_queued_gpu_s" and http_status(refused) == 429
    assert refused.message.startswith("max_queued_gpu_s: tenant budget's unfinished jobs are predicted to cost 10.0")
    assert stored.cost_gpu_s == 4.0


def test_migration_versions_are_unique() -> None:
    """Two branches each adding a migration with one number would skip one of them on an upgraded database."""
    versions = [v for v, _ in migrations()]
    assert len(versions) == len(set(versions)), versions


def test_jobs_from_before_tenants_belong_to_the_default_tenant(store_dsn: str) -> None:
    """A database at the schema before tenants, with a job in it, migrated: the job is the default tenant's."""
    before = [(v, sql) for v, sql in migrations() if v < 3]
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE srserve_schema (version integer PRIMARY KEY, applied_at timestamptz DEFAULT now())")
        for version, sql in before:
            conn.execute(sql)
            conn.execute("INSERT INTO srserve_schema (version) VALUES (%s)", (version,))
        conn.execute(
            "INSERT INTO srserve_jobs (id, request, state, created_at, updated_at, last_progress, num_steps) "
            "VALUES ('old', '{}', 'completed', 1, 1, 1, 4)"
        )

    async def go():
        store = await migrated_store(store_dsn)
        job = await store.get("old")
        mine, _ = await store.list_jobs(10, tenant=DEFAULT_TENANT)
        await store.close()
        return job, mine

    job, mine = run(go())
    assert (job.tenant, job.priority) == (DEFAULT_TENANT, 0)
    assert [j.id for j in mine] == ["old"]


# -- the ingress: every query answers another tenant's job as a missing one ----------------------
def _core(store_dsn: str, tmp_path: Path, monkeypatch):
    from srserve.serving.ingress import IngressCore

    for var, value in (("T_A_TOKEN", A_TOKEN), ("T_A_NEXT", A_NEXT), ("T_B_TOKEN", B_TOKEN)):
        monkeypatch.setenv(var, value)
    config = ServingConfig(
        tenants=TENANTS,
        job_store=JobStoreConfig(embedded_dsn=store_dsn),
        artifacts=ArtifactStoreConfig(kind="local", path=str(tmp_path)),
    )
    return IngressCore(config, RequestDefaults(), "tiny-wan2.1", "wan2.1", {})


def _answer(exc: ServingError) -> tuple[Any, ...]:
    return type(exc), exc.message, exc.param, exc.code, http_status(exc), grpc_status(exc)


def test_every_query_of_another_tenants_job_answers_as_a_missing_one(store_dsn, tmp_path, monkeypatch) -> None:
    core = _core(store_dsn, tmp_path, monkeypatch)
    a = core.authorize(f"Bearer {A_TOKEN}")
    b = core.authorize(f"Bearer {B_TOKEN}")
    missing_id = "video_" + "0" * 32
    a_id = "video_" + "a" * 32

    async def answers(job_id: str, tenant: Tenant) -> dict[str, tuple[Any, ...]]:
        calls = {
            "get": lambda: core.get(job_id, tenant=tenant),
            "cancel": lambda: core.cancel(job_id, tenant=tenant),
            "delete": lambda: core.delete(job_id, tenant=tenant),
            "events": lambda: core.events(job_id, 0, 0.0, tenant=tenant),
            "events_waiting": lambda: core.events(job_id, 0, 30.0, tenant=tenant),  # answered at once, no wait
            "video": lambda: core.video(job_id, tenant=tenant),
            "content": lambda: core.content(job_id, tenant=tenant),
            "wait": lambda: core.wait(job_id, 30.0, tenant=tenant),
        }
        out = {}
        for name, call in calls.items():
            with pytest.raises(JobNotFound) as info:
                await call()
            out[name] = _answer(info.value)
        with pytest.raises(JobNotFound) as info:
            async for _ in core.stream_events(job_id, tenant=tenant):
                pass
        out["stream_events"] = _answer(info.value)
        return out

    async def go():
        await core.store.migrate()
        await core.store.create(a_id, REQUEST, 20, None, "o1", 30.0, LIMITS, tenant=a)
        foreign = await answers(a_id, b)
        missing = await answers(missing_id, b)
        listed_b, _ = await core.list(10, tenant=b)
        listed_a, _ = await core.list(10, tenant=a)
        paged_b = await core.list(10, a_id, "asc", tenant=b)
        # The owner still sees it, and can act on it: a queued job has no video yet.
        owned = await core.get(a_id, tenant=a)
        with pytest.raises(NotReady):
            await core.video(a_id, tenant=a)
        cancelled = await core.cancel(a_id, tenant=a)
        await core.delete(a_id, tenant=a)
        gone = await core.store.get(a_id)
        await core.store.close()
        return foreign, missing, listed_b, listed_a, paged_b, owned, cancelled, gone

    foreign, missing, listed_b, listed_a, paged_b, owned, cancelled, gone = run(go())
    for name, answer in foreign.items():
        # The same kind, message (with the id asked for swapped), param, code and statuses.
        assert answer[0] is JobNotFound and answer[2:] == ("id", "not_found", 404, "NOT_FOUND"), name
        assert answer[1].replace(a_id, missing_id) == missing[name][1], name
        assert answer[2:] == missing[name][2:], name
    assert listed_b == [] and [j.id for j in listed_a] == [a_id]
    assert paged_b == ([], False)
    assert owned.tenant == "a"
    assert cancelled.state == JobState.CANCELLED
    assert gone is None


def test_the_ingress_identifies_tenants_and_refuses_the_rest(store_dsn, tmp_path, monkeypatch) -> None:
    from srserve.serving.control.errors import Unauthenticated

    core = _core(store_dsn, tmp_path, monkeypatch)
    assert core.authorize(f"Bearer {A_NEXT}").name == "a"
    answers = set()
    for header in (None, "Bearer nope-nope-nope-nope-nope", f"Bearer {A_TOKEN}0"):
        with pytest.raises(Unauthenticated) as info:
            core.authorize(header)
        answers.add(_answer(info.value))
    assert answers == {
        (Unauthenticated, "missing or invalid bearer token", None, "unauthenticated", 401, "UNAUTHENTICATED")
    }


# -- priority -------------------------------------------------------------------------------------
def test_priority_is_bounded_by_the_tenants_maximum() -> None:
    from srserve.serving.ingress import IngressCore

    IngressCore.check_priority(A, 0)
    IngressCore.check_priority(A, 3)
    for asked in (4, 1 << 31):
        with pytest.raises(InvalidRequest) as info:
            IngressCore.check_priority(A, asked)
        assert info.value.param == "priority"
        assert "between 0 and 3" in info.value.message and "max_priority" in info.value.message
    with pytest.raises(InvalidRequest, match="between 0 and 0"):
        IngressCore.check_priority(B, 1)
    IngressCore.check_priority(DEFAULT, PRIORITY_LIMIT)  # the one tenant of an open deployment: any


def test_priority_in_the_create_body() -> None:
    assert create_priority({"prompt": "x"}) == 0
    assert create_priority({"prompt": "x", "priority": 2}) == 2
    assert create_priority({"prompt": "x", "priority": 2.0}) == 2  # JSON Schema's integers include 2.0
    assert create_priority(form_values([("prompt", "x"), ("priority", "5")])) == 5
    parse_create({"prompt": "x", "priority": PRIORITY_LIMIT})
    for bad in (-1, PRIORITY_LIMIT + 1, "high", True):
        with pytest.raises(InvalidRequest) as info:
            parse_create({"prompt": "x", "priority": bad})
        assert info.value.param == "priority"
    request, _ = create_request({"prompt": "x", "priority": 1}, "tiny-wan2.1", 4)
    assert "priority" not in request.model_dump()  # the job's, not the engine's


def test_the_published_priority_bound_is_the_deployments() -> None:
    from srserve.serving.api.http import openapi_document

    doc = openapi_document("tiny-wan2.1", max_priority=3)
    assert doc["components"]["schemas"]["VideoCreateParams"]["properties"]["priority"]["maximum"] == 3
    handoff = {p["name"]: p for p in doc["paths"]["/v1/handoffs"]["post"]["parameters"]}
    assert handoff["priority"]["schema"]["maximum"] == 3


# -- metrics --------------------------------------------------------------------------------------
def test_tenant_work_splits_each_pools_work(store_dsn: str) -> None:
    """Each tenant's queued GPU-seconds are priced as the pool's own: per pool they add up to the pool's."""
    from srserve.serving.config import PoolConfig, PoolLayout
    from srserve.serving.ops.metrics import record_quota_refusal, record_tenants, tenant_work

    async def go():
        store = await migrated_store(store_dsn)
        for i in range(5):
            await _create(store, f"j{i}", A if i < 2 else B)
        jobs = await store.jobs_for_work()
        counts = await store.tenant_counts()
        await store.close()
        return jobs, counts

    jobs, counts = run(go())
    for job in jobs:  # measured step times, as finished jobs would give
        job.timeline = {"sketch_start": 0.0, "sketch_end": 1.0}
        job.switch_step = 5
    now = 10.0
    times = measure_stage_times(jobs, now)
    layout = PoolLayout.disaggregated(PoolConfig(), PoolConfig(), None)
    split = tenant_work(jobs, layout, now, times, counts)
    assert set(split) == {"a", "b"}
    for index, pool in enumerate(layout.pools):
        whole = estimate_pool_work(jobs, pool, now, times=times).work_s
        assert sum(works[index].work_s for works in split.values()) == pytest.approx(whole)
    assert split["b"][0].work_s > split["a"][0].work_s > 0  # b has more queued work on the sketch pool
    record_tenants(counts, split)  # without Ray the metrics accept records and export nothing
    record_quota_refusal("a", "max_live_jobs")
