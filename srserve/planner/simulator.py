"""A discrete-event simulation of srserve's pools, fed with a stage profile.

It models what the serving layer does: the ingress sends a job to the sketch pool (or the
colocated pool); Serve's router picks, among replicas with fewer than `max_ongoing` requests,
the less loaded of two sampled at random (power of two choices), and holds the job when all are
full; a replica runs one job at a time and keeps the others in its local FIFO. After the sketch
(plus the handoff delay) the job goes to the render pool the same way. Service times come from
the profile for the replica's device kind, the request's shape, steps and switch step.

On a CPU-only host (`host_cores`), busy replicas share the cores left by the rest of the cluster
(processor sharing): each progresses at min(1, (host_cores - background) / (demand x busy)), with
background = idle + per_busy x busy replicas (the ingress, job store and proxy work that running jobs
cause), all from the profile. On GPUs every replica has its own device and runs at full speed.

Output: the same RequestRecords a measured run yields, so `srserve.workload.stats.summarize`
reports predicted and measured runs alike.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from srserve.engine.parallel.config import ParallelSpec
from srserve.engine.request import RequestDefaults, SwitchPolicy
from srserve.planner.profile import Profile, ShapeCosts
from srserve.serving.control.pricing.load_switch import LoadSnapshot, LoadSwitchConfig, choose_switch
from srserve.workload.arrivals import ClosedLoop, GammaArrivals, PoissonArrivals, TraceArrivals
from srserve.workload.mix import RequestClass, RequestMix
from srserve.workload.plan import PlannedRequest, SloPolicy, closed_loop_stream, open_loop_plan
from srserve.workload.records import COLOCATED, RENDER, SKETCH, RequestRecord

SKETCH_ROLES = ("large", "text_encoder")
RENDER_ROLES = ("small", "vae")
COLOCATED_ROLES = ("large", "small", "text_encoder", "vae")


class PoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    replicas: int = Field(ge=1)
    max_ongoing: int = Field(4, ge=1)
    # A step cache's speed factor on this pool's denoising steps (benchmarks/speed_knobs.py measures one).
    cache_speedup: float = Field(1.0, ge=1.0)
    # Devices per replica (ParallelSpec.label(): 1, u2, c2, u2xc2); its step time is the profile's for it.
    parallel: str = "1"

    @field_validator("parallel")
    @classmethod
    def _known_degree(cls, value: str) -> str:
        return ParallelSpec.parse(value).label()

    @property
    def devices_per_replica(self) -> int:
        return ParallelSpec.parse(self.parallel).world_size

    def label(self) -> str:
        degree = "" if self.parallel == "1" else f"[{self.parallel}]"
        return f"{self.replicas}x{self.kind}{degree}"


class ClusterLayout(BaseModel):
    """What to simulate: disaggregated sketch + render pools, or one colocated pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["disaggregated", "colocated"]
    sketch: PoolSpec | None = None
    render: PoolSpec | None = None
    colocated: PoolSpec | None = None

    def pools(self) -> dict[str, PoolSpec]:
        if self.layout == "colocated":
            assert self.colocated is not None
            return {COLOCATED: self.colocated}
        assert self.sketch is not None and self.render is not None
        return {SKETCH: self.sketch, RENDER: self.render}

    @property
    def gpus(self) -> int:
        """Devices: a replica of parallel degree U x C costs U x C of them."""
        return sum(p.replicas * p.devices_per_replica for p in self.pools().values())

    def replicas_per_pool(self) -> dict[str, int]:
        return {name: p.replicas for name, p in self.pools().items()}

    def label(self) -> str:
        if self.layout == "colocated":
            return f"colocated {self.colocated.label()}"
        return f"sketch {self.sketch.label()} + render {self.render.label()}"


@dataclass
class _Job:
    rec: RequestRecord
    cls: RequestClass
    width: int
    height: int
    frames: int
    n: int
    k: int


@dataclass(eq=False)
class _Replica:
    pool: str
    name: str
    kind: str
    ongoing: int = 0
    local: deque = field(default_factory=deque)
    current: _Job | None = None
    work: float = 0.0
    remaining: float = 0.0
    started: float = 0.0
    version: int = 0


class Simulation:
    """One run over a request sequence (open loop) or a closed loop of clients."""

    def __init__(
        self,
        profile: Profile,
        cluster: ClusterLayout,
        defaults: RequestDefaults,
        seed: int = 0,
        load_switch: LoadSwitchConfig | None = None,
    ) -> None:
        self.profile = profile
        self.cluster = cluster
        self.defaults = defaults
        self.load_switch = load_switch or LoadSwitchConfig()
        self.speedup = {name: spec.cache_speedup for name, spec in cluster.pools().items()}
        self.rng = random.Random(seed)
        self.switch_rng = random.Random(seed + 2)
        self.cores = profile.host_cores
        self.pools: dict[str, list[_Replica]] = {
            name: [_Replica(name, f"{name}-{i}", spec.kind) for i in range(spec.replicas)]
            for name, spec in cluster.pools().items()
        }
        self.waiting: dict[str, deque[_Job]] = {name: deque() for name in self.pools}
        self.max_ongoing = {name: spec.max_ongoing for name, spec in cluster.pools().items()}
        self.busy: set[_Replica] = set()
        self.events: list[tuple[float, int, str, object, int]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.last = 0.0
        self.finished: list[RequestRecord] = []
        self.on_finish = None
        self.on_client = None

    # -- request shapes --------------------------------------------------------------------
    def _job(self, planned: PlannedRequest, arrival: float) -> _Job:
        cls = planned.request_class
        width = cls.width or self.defaults.width
        height = cls.height or self.defaults.height
        frames = cls.num_frames or self.defaults.num_frames
        n = cls.num_inference_steps or self.defaults.num_inference_steps
        rec = RequestRecord(
            index=planned.index,
            request_class=cls.name,
            api="sim",
            fields=planned.fields,
            sent_at=arrival,
            slo_s=planned.slo_s,
            num_steps=n,
        )
        rec.timeline["submitted"] = arrival
        job = _Job(rec, cls, width, height, frames, n, 0)
        job.k = self._switch_step(cls, n, job)
        return job

    def _switch_step(self, cls: RequestClass, n: int, job: _Job) -> int:
        policy = SwitchPolicy.parse(cls.switch)
        if policy.kind == "fixed":
            return min(policy.fixed_step(n), n)
        cap = n
        if policy.kind == "load":  # as the ingress does at admission, from the pools' queued work
            choice = choose_switch(policy, n, self._load(job), self.load_switch, job.rec.slo_s)
            cap = choice.cap
            job.rec.switch_reason = choice.reason
        dist = cls.switch_steps or self.profile.adaptive_switch.get(n)
        if not dist:
            raise ValueError(
                f"class {cls.name!r}: an adaptive switch needs a switch-step distribution for N={n} "
                "(the class's switch_steps or the profile's adaptive_switch)"
            )
        steps, weights = zip(*sorted(dist.items()), strict=True)
        return min(int(self.switch_rng.choices(steps, weights=weights)[0]), cap)

    def _load(self, job: _Job) -> LoadSnapshot:
        """The load snapshot the ingress would see now (queued and remaining work per pool)."""
        if self.cluster.layout == "colocated":
            c = self._costs(job, self.cluster.colocated.kind, COLOCATED)
            work = sum(self._queued(COLOCATED))
            replicas = self.cluster.colocated.replicas
            return LoadSnapshot(work, 0.0, replicas, replicas, c.large_step_s, c.small_step_s, c.encode_s, c.decode_s)
        s = self._costs(job, self.cluster.sketch.kind, SKETCH)
        r = self._costs(job, self.cluster.render.kind, RENDER)
        incoming = sum(r.render_s(j.n, j.k) for j in self._jobs_in(SKETCH))
        return LoadSnapshot(
            sum(self._queued(SKETCH)),
            sum(self._queued(RENDER)) + incoming,
            self.cluster.sketch.replicas,
            self.cluster.render.replicas,
            s.large_step_s,
            r.small_step_s,
            s.encode_s,
            r.decode_s,
        )

    def _jobs_in(self, pool: str) -> list[_Job]:
        jobs = list(self.waiting[pool])
        for r in self.pools[pool]:
            jobs.extend(r.local)
        return jobs

    def _queued(self, pool: str) -> list[float]:
        """Seconds of work each job in `pool` still needs (the running ones: what is left)."""
        out = [self._work(pool, j, self.pools[pool][0].kind) for j in self._jobs_in(pool)]
        out.extend(r.remaining for r in self.pools[pool] if r.current is not None)
        return out

    def _costs(self, job: _Job, kind: str, pool: str | None = None) -> ShapeCosts:
        """The profile's costs, with `pool`'s step cache (sketch: large steps, render: small, colocated: both)."""
        costs = self.profile.costs(kind, job.width, job.height, job.frames)
        spec = self.cluster.pools().get(pool) if pool is not None else None
        if spec is not None and pool in (SKETCH, RENDER):  # a multi-device replica's step time, from the profile
            costs = costs.at_degree(spec.parallel, "large" if pool == SKETCH else "small")
        speedup = self.speedup.get(pool, 1.0) if pool is not None else 1.0
        return costs.with_cache(
            large=speedup if pool in (SKETCH, COLOCATED) else 1.0, small=speedup if pool in (RENDER, COLOCATED) else 1.0
        )

    def _work(self, pool: str, job: _Job, kind: str) -> float:
        c = self._costs(job, kind, pool)
        if pool == SKETCH:
            return c.sketch_s(job.k)
        if pool == RENDER:
            return c.render_s(job.n, job.k)
        return c.colocated_s(job.n, job.k)

    # -- event machinery -------------------------------------------------------------------
    def _push(self, t: float, kind: str, payload: object, version: int = 0) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, payload, version))

    def _rate(self) -> float:
        if self.cores is None or not self.busy:
            return 1.0
        p = self.profile
        free = self.cores - p.background_cpu_idle - p.background_cpu_per_busy_replica * len(self.busy)
        free = max(free, 0.1 * self.cores)
        return min(1.0, free / (p.replica_cpu_demand * len(self.busy)))

    def _advance(self, t: float) -> None:
        if self.cores is not None and t > self.last:
            rate = self._rate()
            for r in self.busy:
                r.remaining = max(0.0, r.remaining - (t - self.last) * rate)
        self.last = t
        self.now = t

    def _reschedule_all(self) -> None:
        rate = self._rate()
        for r in self.busy:
            r.version += 1
            self._push(self.now + r.remaining / rate, "done", r, r.version)

    def _start(self, r: _Replica) -> None:
        job = r.local.popleft()
        r.current = job
        r.work = r.remaining = self._work(r.pool, job, r.kind)
        r.started = self.now
        t = job.rec.timeline
        if r.pool == RENDER:
            t["render_start"] = self.now
        else:
            t["encode_start"] = self.now
        job.rec.replicas[r.pool] = r.name
        self.busy.add(r)
        if self.cores is not None:
            self._reschedule_all()
        else:
            r.version += 1
            self._push(self.now + r.work, "done", r, r.version)

    def _route(self, pool: str, job: _Job) -> None:
        open_replicas = [r for r in self.pools[pool] if r.ongoing < self.max_ongoing[pool]]
        if not open_replicas:
            self.waiting[pool].append(job)
            return
        if len(open_replicas) > 2:
            open_replicas = self.rng.sample(open_replicas, 2)
        pick = min(open_replicas, key=lambda r: (r.ongoing, self.rng.random()))
        pick.ongoing += 1
        pick.local.append(job)
        if pick.current is None:
            self._start(pick)

    def _done(self, r: _Replica) -> None:
        job = r.current
        assert job is not None
        r.current = None
        self.busy.discard(r)
        r.ongoing -= 1
        t = job.rec.timeline
        delays = self.profile.delays
        if r.pool == SKETCH:
            t["sketch_end"] = self.now
            self._push(self.now + delays.handoff_s, "arrive", (RENDER, job))
        else:
            t["render_end"] = self.now
            decode = self._costs(job, r.kind, r.pool).decode_s
            t["decode_start"] = self.now - (self.now - r.started) * min(1.0, decode / r.work if r.work else 0.0)
            if r.pool == COLOCATED:
                c = self._costs(job, r.kind, r.pool)
                frac = (c.encode_s + job.k * c.large_step_s) / r.work if r.work else 0.0
                t["sketch_end"] = r.started + (self.now - r.started) * min(1.0, frac)
            self._push(self.now + delays.completion_s, "finish", job)
        if self.waiting[r.pool]:
            nxt = self.waiting[r.pool].popleft()
            r.ongoing += 1
            r.local.append(nxt)
        if r.local:
            self._start(r)
        elif self.cores is not None:
            self._reschedule_all()

    def _finish(self, job: _Job) -> None:
        rec = job.rec
        rec.timeline["finished"] = self.now
        rec.status = "completed"
        rec.switch_step = job.k
        self.finished.append(rec)
        if self.on_finish is not None:
            self.on_finish(rec)

    def _first_pool(self) -> str:
        return COLOCATED if self.cluster.layout == "colocated" else SKETCH

    def submit(self, planned: PlannedRequest, at: float) -> None:
        job = self._job(planned, at)
        self._push(at + self.profile.delays.dispatch_s, "arrive", (self._first_pool(), job))

    def step(self) -> None:
        """Process the next event."""
        t, _, kind, payload, version = heapq.heappop(self.events)
        if kind == "done" and payload.version != version:  # superseded by a rate change
            return
        self._advance(t)
        if kind == "arrive":
            self._route(*payload)
        elif kind == "done":
            self._done(payload)
        elif kind == "finish":
            self._finish(payload)
        elif kind == "submit":
            self.submit(payload, t)
        elif kind == "client" and self.on_client is not None:
            self.on_client(t)

    def run_events(self) -> None:
        while self.events:
            self.step()


def simulate(
    profile: Profile,
    cluster: ClusterLayout,
    arrival: PoissonArrivals | GammaArrivals | TraceArrivals | ClosedLoop,
    mix: RequestMix,
    defaults: RequestDefaults,
    *,
    max_requests: int | None = None,
    max_duration_s: float | None = None,
    seed: int = 0,
    slo: SloPolicy | None = None,
    load_switch: LoadSwitchConfig | None = None,
) -> list[RequestRecord]:
    """Predicted per-request records for the same load a LoadRunner would send (same seed, same sequence)."""
    sim = Simulation(profile, cluster, defaults, seed, load_switch)
    if isinstance(arrival, ClosedLoop):
        if max_requests is None:
            raise ValueError("a simulated closed loop needs max_requests")
        stream = closed_loop_stream(mix, seed, slo)
        sent = 0

        def send_next(at: float) -> None:
            nonlocal sent
            if sent < max_requests:
                sent += 1
                sim.submit(next(stream), at)

        sim.on_finish = lambda _rec: sim._push(sim.now + arrival.think_s, "client", None)
        sim.on_client = send_next
        for _ in range(arrival.concurrency):
            send_next(0.0)
    else:
        for planned in open_loop_plan(arrival, mix, max_requests, max_duration_s, seed, slo):
            sim._push(planned.offset_s, "submit", planned)
    sim.run_events()
    return sorted(sim.finished, key=lambda r: r.index)


def unloaded_latency(profile: Profile, cluster: ClusterLayout, cls: RequestClass, defaults: RequestDefaults) -> float:
    """One request alone on the cluster (its mean switch step for adaptive policies)."""
    recs = simulate(profile, cluster, ClosedLoop(concurrency=1), RequestMix(classes=[cls]), defaults, max_requests=1)
    return recs[0].latency or 0.0
