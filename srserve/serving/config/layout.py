"""The deployment's layout as data: which pools run, where each stage of a job goes, what admission counts.

Everything that differs between the disaggregated and the colocated layout is decided here, once:
the app builds one deployment per entry of `pools`; the ingress calls `routes[stage]` on that
pool's handle and admits under `backlogs`; load estimates and step-cache limits read the pool
that runs each phase (`phases`). Nothing else asks which layout it is in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from srserve.serving.config.pools import PoolConfig
from srserve.serving.control.jobs import PHASE_STATES, Phase, PoolBacklog

PoolName = Literal["text", "sketch", "render", "colocated"]
LayoutKind = Literal["disaggregated", "colocated"]


@dataclass(frozen=True)
class StageRoute:
    """Where the orchestrator sends one stage: a pool's deployment, the method it calls there, whether
    the call takes the encoder pool's prompt embeddings (when the layout has that pool), and the models
    the stage runs (`sides`: "sketch", "render"), whose LoRA adapter the replica must hold."""

    pool: PoolName
    method: str
    sides: tuple[str, ...]
    takes_prompt: bool = False


@dataclass(frozen=True)
class PoolLayout:
    kind: LayoutKind
    pools: Mapping[PoolName, PoolConfig]  # one deployment each
    routes: Mapping[Phase, StageRoute]  # the orchestrator's stage that runs each phase of a job

    @classmethod
    def disaggregated(cls, sketch: PoolConfig, render: PoolConfig, text: PoolConfig | None = None) -> PoolLayout:
        """Sketch and render pools (the split), with an optional text-encoder pool before the sketch."""
        routes = {
            "sketch": StageRoute("sketch", "sketch", ("sketch",), takes_prompt=True),
            "render": StageRoute("render", "render", ("render",)),
        }
        return cls._with_text("disaggregated", {"sketch": sketch, "render": render}, routes, text)

    @classmethod
    def colocated(cls, colocated: PoolConfig, text: PoolConfig | None = None) -> PoolLayout:
        """One pool whose replicas hold both models: a job's sketch stage runs the whole job there (the
        handoff stays in memory); an uploaded handoff's render stage runs there too."""
        routes = {
            "sketch": StageRoute("colocated", "generate", ("sketch", "render"), takes_prompt=True),
            "render": StageRoute("colocated", "render", ("render",)),
        }
        return cls._with_text("colocated", {"colocated": colocated}, routes, text)

    @classmethod
    def _with_text(
        cls,
        kind: LayoutKind,
        pools: dict[PoolName, PoolConfig],
        routes: dict[Phase, StageRoute],
        text: PoolConfig | None,
    ) -> PoolLayout:
        """The layout, with the optional text-encoder pool added to its pools."""
        return cls(kind=kind, pools=pools if text is None else {**pools, "text": text}, routes=routes)

    @property
    def phases(self) -> dict[Phase, PoolName]:
        """The pool each phase's work runs on (its caches, replicas, queue): the pool its stage is routed to."""
        return {phase: route.pool for phase, route in self.routes.items()}

    @property
    def encoder(self) -> PoolName | None:
        """A pool that encodes prompts for the stages that take them; None: the stage's replica does."""
        return "text" if "text" in self.pools else None

    def pool(self, phase: Phase) -> PoolConfig:
        """The config of the pool that runs `phase`."""
        return self.pools[self.phases[phase]]

    @property
    def shared(self) -> bool:
        """Both phases run on one pool (its queue holds a job's whole work)."""
        return self.phases["sketch"] == self.phases["render"]

    def backlogs(self) -> tuple[PoolBacklog, ...]:
        """Admission's limits, one per pool that runs a phase, counting every phase it runs."""
        out: dict[PoolName, set[Phase]] = {}
        for phase in PHASE_STATES:
            out.setdefault(self.phases[phase], set()).add(phase)
        return tuple(PoolBacklog(p, frozenset(ph), self.pools[p].max_backlog) for p, ph in out.items())

    def replica_floors(self) -> tuple[int, int]:
        """(sketch, render): replicas each phase's pool has at least, for the load-aware switch."""
        return self.pool("sketch").replica_floor(), self.pool("render").replica_floor()

    def devices(self) -> tuple[int, int]:
        """(sketch, render): devices one replica of each phase's pool holds, for a request's GPU-seconds."""
        return self.pool("sketch").parallel.world_size, self.pool("render").parallel.world_size
