"""Drives load at a running srserve and records every request's server-side timeline.

Open loop: requests go at their planned offsets whatever the server does (a submit runs in a
thread pool, so a slow submit never delays the schedule). Closed loop: `concurrency` clients,
each sending its next request once its previous one ended. One poller thread refreshes all
in-flight jobs with a single "list recent jobs" call per interval (falling back to per-job
lookups), so polling stays cheap on a small machine; latencies come from server stamps and do
not depend on the poll interval.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from srserve.loadgen.clients import JobView, Rejected, Target
from srserve.workload.arrivals import ClosedLoop, GammaArrivals, PoissonArrivals, TraceArrivals
from srserve.workload.mix import RequestMix
from srserve.workload.plan import PlannedRequest, SloPolicy, closed_loop_stream, open_loop_plan
from srserve.workload.records import RequestRecord

LIST_SLACK = 16  # extra jobs listed per poll, for other clients' jobs interleaved with ours
REJECT_BACKOFF_S = 0.25


class LoadRunner:
    def __init__(
        self,
        target: Target,
        arrival: PoissonArrivals | GammaArrivals | TraceArrivals | ClosedLoop,
        mix: RequestMix,
        *,
        max_requests: int | None = None,
        max_duration_s: float | None = None,
        seed: int = 0,
        slo: SloPolicy | None = None,
        poll_interval_s: float = 0.25,
        drain_timeout_s: float = 600.0,
        progress: bool = True,
        label: str = "bench",
        submit_workers: int = 16,
    ) -> None:
        if max_requests is None and max_duration_s is None and not isinstance(arrival, TraceArrivals):
            raise ValueError("bound the run: give max_requests and/or max_duration_s")
        self.target = target
        self.arrival = arrival
        self.mix = mix
        self.max_requests = max_requests
        self.max_duration_s = max_duration_s
        self.seed = seed
        self.slo = slo or SloPolicy()
        self.poll_interval_s = poll_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.progress = progress
        self.label = label
        self.submit_workers = submit_workers
        self.records: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[int, RequestRecord]] = {}
        self._seq = 0
        self._pending_submits = 0
        self._submitting_done = threading.Event()
        self._slots: threading.Semaphore | None = None
        self._bar: tqdm | None = None
        self._t0 = 0.0

    # -- public ---------------------------------------------------------------------------
    def run(self) -> list[RequestRecord]:
        closed = isinstance(self.arrival, ClosedLoop)
        plan = None
        if not closed:
            plan = open_loop_plan(self.arrival, self.mix, self.max_requests, self.max_duration_s, self.seed, self.slo)
        total = len(plan) if plan is not None else self.max_requests
        self._bar = tqdm(total=total, desc=self.label, unit="req", disable=not self.progress, dynamic_ncols=True)
        self._t0 = time.monotonic()
        poller = threading.Thread(target=self._poll_loop, name="loadgen-poller", daemon=True)
        poller.start()
        try:
            with ThreadPoolExecutor(self.submit_workers, thread_name_prefix="loadgen-submit") as pool:
                if plan is not None:
                    self._run_open(pool, plan)
                else:
                    self._run_closed(pool)
        finally:
            self._submitting_done.set()
            poller.join()
            with self._lock:
                for _, rec in self._inflight.values():
                    rec.status = "unfinished"
                self._inflight.clear()
            self._bar.close()
        return sorted(self.records, key=lambda r: r.index)

    # -- sending --------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _out_of_time(self) -> bool:
        return self.max_duration_s is not None and self._elapsed() > self.max_duration_s

    def _run_open(self, pool: ThreadPoolExecutor, plan: list[PlannedRequest]) -> None:
        for planned in plan:
            wait = planned.offset_s - self._elapsed()
            if wait > 0:
                time.sleep(wait)
            if self._out_of_time():
                break
            self._dispatch(pool, planned)

    def _run_closed(self, pool: ThreadPoolExecutor) -> None:
        assert isinstance(self.arrival, ClosedLoop)
        self._slots = threading.Semaphore(self.arrival.concurrency)
        for planned in closed_loop_stream(self.mix, self.seed, self.slo):
            if self.max_requests is not None and planned.index >= self.max_requests:
                break
            while not self._slots.acquire(timeout=0.1):
                if self._out_of_time():
                    return
            if self._out_of_time():
                return
            self._dispatch(pool, planned)

    def _dispatch(self, pool: ThreadPoolExecutor, planned: PlannedRequest) -> None:
        rec = RequestRecord(
            index=planned.index,
            request_class=planned.request_class.name,
            api=self.target.api,
            fields=planned.fields,
            slo_s=planned.slo_s,
        )
        with self._lock:
            self.records.append(rec)
            self._pending_submits += 1
        pool.submit(self._submit, rec)

    def _submit(self, rec: RequestRecord) -> None:
        rec.sent_at = time.time()
        try:
            view = self.target.submit(rec.fields)
        except Rejected as exc:
            self._end_without_job(rec, "rejected", str(exc), backoff=REJECT_BACKOFF_S)
            return
        except Exception as exc:
            self._end_without_job(rec, "error", f"{type(exc).__name__}: {exc}", backoff=REJECT_BACKOFF_S)
            return
        rec.job_id = view.id
        rec.timeline = dict(view.timeline)
        rec.status = view.state
        with self._lock:
            self._seq += 1
            self._inflight[view.id] = (self._seq, rec)
            self._pending_submits -= 1

    def _end_without_job(self, rec: RequestRecord, status: str, error: str, backoff: float) -> None:
        rec.status, rec.error = status, error[:300]
        rec.seen_done_at = time.time()
        with self._lock:
            self._pending_submits -= 1
        self._tick()
        if self._slots is not None:
            time.sleep(backoff)  # a refused client waits a little before its next request
            self._slots.release()

    # -- polling --------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        drain_deadline = None
        while True:
            with self._lock:
                inflight = dict(self._inflight)
                idle = not inflight and self._pending_submits == 0
            if self._submitting_done.is_set():
                if idle:
                    return
                drain_deadline = drain_deadline or time.monotonic() + self.drain_timeout_s
                if time.monotonic() > drain_deadline:
                    return
            if inflight:
                with contextlib.suppress(Exception):  # a transient API error: try again next interval
                    self._refresh(inflight)
            time.sleep(self.poll_interval_s)

    def _refresh(self, inflight: dict[str, tuple[int, RequestRecord]]) -> None:
        oldest = min(seq for seq, _ in inflight.values())
        limit = min(1000, self._seq - oldest + 1 + LIST_SLACK)
        try:
            found = {v.id: v for v in self.target.recent(limit)}
        except Exception:
            found = {}
        for job_id in inflight:
            view = found.get(job_id) or self.target.get(job_id)
            if view.terminal:
                self._finish(job_id, view)

    def _finish(self, job_id: str, view: JobView) -> None:
        with self._lock:
            entry = self._inflight.pop(job_id, None)
        if entry is None:
            return
        rec = entry[1]
        rec.status = view.state
        rec.timeline = dict(view.timeline)
        rec.switch_step = view.switch_step
        rec.switch_reason = view.switch_reason
        rec.num_steps = view.num_steps
        rec.replicas = dict(view.replicas)
        rec.error = view.error
        rec.seen_done_at = time.time()
        self._tick()
        if self._slots is not None:
            think = self.arrival.think_s if isinstance(self.arrival, ClosedLoop) else 0.0
            if think > 0:
                threading.Timer(think, self._slots.release).start()
            else:
                self._slots.release()

    def _tick(self) -> None:
        if self._bar is None or self._bar.disable:
            return
        with self._lock:
            recs = list(self.records)
            inflight = len(self._inflight)
        ok = sum(1 for r in recs if r.completed)
        bad = sum(1 for r in recs if r.status in ("failed", "cancelled", "error"))
        rejected = sum(1 for r in recs if r.status == "rejected")
        self._bar.set_postfix(
            ok=ok, failed=bad, rejected=rejected, inflight=inflight, rps=f"{ok / self._elapsed():.2f}"
        )
        self._bar.update(1)


def unloaded_latency(
    target: Target, mix: RequestMix, runs: int = 2, seed: int = 10_000, progress: bool = False
) -> dict[str, float]:
    """Each class's latency on the idle server: `runs` requests one at a time, median.

    Also warms up every replica path the classes use before a measured run.
    """
    out: dict[str, float] = {}
    for cls in mix.classes:
        runner = LoadRunner(
            target,
            ClosedLoop(concurrency=1),
            RequestMix(classes=[cls]),
            max_requests=runs,
            seed=seed,
            progress=progress,
            label=f"unloaded {cls.name}",
            poll_interval_s=0.25,
        )
        lat = [r.latency for r in runner.run() if r.latency is not None]
        if not lat:
            raise RuntimeError(f"unloaded latency of class {cls.name!r}: no request completed")
        out[cls.name] = statistics.median(lat)
    return out
