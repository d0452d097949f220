"""Job-scoped logging: the job id on every log line written while a job is being worked on.

The ingress task driving a job, and each worker thread running a stage of it, bind the job id
(`bind_job`); a filter on srserve's loggers then adds it to every record. With Serve's JSON log
encoding (`logging_config: {encoding: JSON}`) it is the `srserve_job_id` field of each JSON line,
next to Serve's own `request_id`, `deployment` and `replica` (the record attribute `job_id` is Ray's
job id, which Serve strips); the message itself starts with `job_id=video_...`, so the default TEXT
encoding carries it too. Binding is a context variable: asyncio tasks and
`asyncio.to_thread` calls carry their own, so concurrent jobs never mix.
"""

from __future__ import annotations

import contextvars
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from srserve.serving.control.jobs import Job

_JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("srserve_job_id", default=None)

# The loggers srserve writes job lines to: Serve's (it reaches the replica's log file) and ours.
JOB_LOGGERS = ("ray.serve", "srserve")
# The record attribute (JSON field) holding the job id; `job_id` is taken by Ray's own job id.
JOB_ID_FIELD = "srserve_job_id"


def bind_job(job_id: str | None) -> contextvars.Token:
    """Attach `job_id` to every following log line of the current task or thread context."""
    return _JOB_ID.set(job_id)


class JobIdFilter(logging.Filter):
    """Adds the job id (bound, or passed as `extra={JOB_ID_FIELD: ...}`) to the record as
    `srserve_job_id`; writes it into the message too unless the message already names the job."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, JOB_ID_FIELD, None) or _JOB_ID.get()
        if not job_id:
            return True
        setattr(record, JOB_ID_FIELD, job_id)
        if job_id not in record.getMessage():  # a logger-level filter sees each record once
            record.msg = f"job_id={job_id.replace('%', '%%')} {record.msg}"
        return True


def install_job_log_filter(names: tuple[str, ...] = JOB_LOGGERS) -> None:
    """Put the filter on srserve's loggers in this process (idempotent)."""
    for name in names:
        target = logging.getLogger(name)
        if not any(isinstance(f, JobIdFilter) for f in target.filters):
            target.addFilter(JobIdFilter())


def log_job_finished(job: Job) -> None:
    """One key=value line per job at its final state: the outcome and where the time went."""
    t = job.timeline
    total = t["finished"] - t["submitted"] if "finished" in t and "submitted" in t else None
    install_job_log_filter()  # the line carries the job id in its message and JSON field
    logging.getLogger("ray.serve").info(
        "job finished state=%s error_code=%s steps=%d switch_step=%s switch_cap=%s switch_reason=%s handoff_bytes=%d "
        "total_s=%s replicas=%s",
        job.state.value,
        job.error_code or "-",
        job.num_steps,
        "-" if job.switch_step is None else job.switch_step,
        "-" if job.switch_cap is None else job.switch_cap,
        job.switch_reason or "-",
        job.handoff_bytes,
        "-" if total is None else f"{total:.3f}",
        ",".join(f"{stage}:{replica}" for stage, replica in job.replicas.items()) or "-",
        extra={JOB_ID_FIELD: job.id},
    )
