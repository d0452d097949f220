"""A stage attempt as it crosses Ray: the ticket the orchestrator sends, the result a pool answers,
and why an attempt stopped (or why the store refused one of its writes).

Plain dataclasses and enums: they travel by pickling between the ingress and the pool replicas.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from srserve.engine.adapters.spec import resolve_lora


class StopReason(StrEnum):
    """Why the store refused an attempt's write, and so why its worker stopped."""

    UNKNOWN = "unknown"  # no such job (deleted)
    CANCELLED = "cancelled"  # the client cancelled it
    DEADLINE = "deadline"  # past its deadline (ended for it, or about to be)
    ENDED = "ended"  # ended otherwise (failed, completed) by someone else
    SUPERSEDED = "superseded"  # a newer attempt (fencing token) owns the job
    ILLEGAL = "illegal"  # a state change the state machine does not allow: the job is still live

    @property
    def attempt_scoped(self) -> bool:
        """True when the reason is about this attempt only: a later attempt of the job may still run."""
        return self in (StopReason.SUPERSEDED, StopReason.ILLEGAL)


class Outcome(StrEnum):
    HANDED_OFF = "handed_off"  # the sketch's handoff is durable: render next
    COMPLETED = "completed"  # the video is durable and the job completed
    STOPPED = "stopped"  # the attempt stopped at a step boundary or its durable write was refused
    HANDOFF_LOST = "handoff_lost"  # the render found no handoff in artifact storage: sketch again


@dataclass(frozen=True)
class StageTicket:
    """What an attempt needs: the job, its fencing token, the request, the deadline, the handoff to render."""

    job_id: str
    fence: int
    request: dict[str, Any]
    deadline: float | None = None
    handoff_key: str | None = None

    def adapter(self, sides: Iterable[str]) -> str | None:
        """The LoRA adapter a replica running the job's models `sides` switches to for this job (the name
        Serve's multiplexing routes by), or None: no adapter, a fused one, or none for those models."""
        lora = resolve_lora(self.request.get("lora"), None)
        if lora is None or lora.fused or not any(lora.on(side) for side in sides):
            return None
        return lora.name


@dataclass(frozen=True)
class StageResult:
    """What a pool's stage method answers the orchestrator."""

    outcome: Outcome
    reason: StopReason | None = None  # STOPPED only; None: stopped for a reason the worker did not record
    handoff_key: str | None = None
    switch_step: int | None = None
    video_bytes: int = 0

    @classmethod
    def handed_off(cls, key: str, switch_step: int) -> StageResult:
        return cls(Outcome.HANDED_OFF, handoff_key=key, switch_step=switch_step)

    @classmethod
    def completed(cls, video_bytes: int, switch_step: int | None) -> StageResult:
        return cls(Outcome.COMPLETED, switch_step=switch_step, video_bytes=video_bytes)

    @classmethod
    def stopped(cls, reason: StopReason | None) -> StageResult:
        return cls(Outcome.STOPPED, reason=reason)

    @classmethod
    def handoff_lost(cls) -> StageResult:
        return cls(Outcome.HANDOFF_LOST)
