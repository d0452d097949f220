"""Structured logs: every line written while a job is worked on carries its id, in Serve's JSON
encoding (a `srserve_job_id` field) and in text (`job_id=...`); concurrent jobs never mix."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging

import pytest
from ray._common.formatters import JSONFormatter

from srserve.serving.control.jobs import Job, JobState
from srserve.serving.ops.job_logging import (
    JOB_ID_FIELD,
    bind_job,
    install_job_log_filter,
    log_job_finished,
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def job_log():
    """A logger with srserve's job filter, collecting records (what a replica's handlers receive)."""
    logger = logging.getLogger("srserve.test-jobs")
    logger.setLevel(logging.INFO)
    install_job_log_filter((logger.name,))
    handler = _Collect()
    logger.addHandler(handler)
    yield logger, handler.records
    logger.removeHandler(handler)


def test_lines_inside_a_job_carry_its_id_and_others_do_not(job_log) -> None:
    logger, records = job_log

    def in_job() -> None:  # a task or thread of its own, as a job's driver and stages run in
        bind_job("video_abc")
        logger.info("sketch step %d/%d", 3, 10)
        logger.warning("job %s: replica lost", "video_abc")  # already names the job: not repeated

    logger.info("before")
    contextvars.copy_context().run(in_job)
    logger.info("after")
    assert [getattr(r, JOB_ID_FIELD, None) for r in records] == [None, "video_abc", "video_abc", None]
    assert records[1].getMessage() == "job_id=video_abc sketch step 3/10"
    assert records[2].getMessage() == "job video_abc: replica lost"
    line = json.loads(JSONFormatter().format(records[1]))  # Serve's JSON log encoding
    assert line["srserve_job_id"] == "video_abc" and line["levelname"] == "INFO"


def test_concurrent_jobs_and_their_worker_threads_keep_their_own_ids(job_log) -> None:
    logger, records = job_log

    def stage(n: int) -> None:  # what a worker runs in asyncio.to_thread
        logger.info("stage line %d", n)

    async def drive(job_id: str) -> None:
        bind_job(job_id)  # as IngressCore._drive does, once per task
        for n in range(3):
            logger.info("drive line %d", n)
            await asyncio.to_thread(stage, n)
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(drive("video_1"), drive("video_2"))

    asyncio.run(main())
    assert len(records) == 12
    for r in records:
        assert r.getMessage().startswith(f"job_id={r.srserve_job_id} ")
    assert sorted(r.srserve_job_id for r in records) == ["video_1"] * 6 + ["video_2"] * 6


def test_a_finished_job_gets_one_summary_line() -> None:
    logger = logging.getLogger("ray.serve")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        job = Job(id="video_xyz", request={}, created_at=1.0, num_steps=20, switch_step=6, handoff_bytes=4096)
        job.switch_cap, job.switch_reason = 8, "balance"
        job.state = JobState.COMPLETED
        job.timeline.update({"submitted": 1.0, "finished": 3.5})
        job.replicas.update({"sketch": "r1", "render": "r2"})
        log_job_finished(job)
    finally:
        logger.removeHandler(handler)
    (record,) = handler.records
    assert record.srserve_job_id == "video_xyz"
    assert record.getMessage() == (
        "job_id=video_xyz job finished state=completed error_code=- steps=20 switch_step=6 switch_cap=8 "
        "switch_reason=balance handoff_bytes=4096 total_s=2.500 replicas=sketch:r1,render:r2"
    )
