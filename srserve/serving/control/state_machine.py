"""The job state machine: which state may follow which, and what a stage attempt resumes from.

    queued -> encoding -> sketching -> handed_off -> rendering -> decoding -> completed
    (queued -> sketching when the prompt is encoded elsewhere; failed / cancelled from any live state)

A job only moves backwards when a new attempt of a stage starts after the last one died: the
sketch restarts from `queued` (nothing of it was durable), the render from `handed_off` (the
handoff is in artifact storage). Every attempt carries a fencing token (the job's `fence`, bumped
when the attempt starts); the store refuses any write that carries an older token, so a replica
still working on a superseded attempt can never overwrite its successor, and any write asking for a
move `can_move` does not allow (both refusals are StopReasons, not exceptions: the worker stops and
the orchestrator decides). Plain Python, no I/O.
"""

from __future__ import annotations

from srserve.serving.control.jobs import TERMINAL_STATES, JobState

S = JobState
_FORWARD: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.ENCODING, S.SKETCHING}),
    S.ENCODING: frozenset({S.SKETCHING}),
    S.SKETCHING: frozenset({S.HANDED_OFF}),
    S.HANDED_OFF: frozenset({S.RENDERING}),
    S.RENDERING: frozenset({S.DECODING}),
    S.DECODING: frozenset({S.COMPLETED}),
}
_ENDS = frozenset({S.FAILED, S.CANCELLED})
ALLOWED: dict[JobState, frozenset[JobState]] = {
    **{state: nxt | _ENDS for state, nxt in _FORWARD.items()},
    **{state: frozenset() for state in TERMINAL_STATES},
}

# Where a new attempt of each stage starts, and the states it may be started from: a render from
# any render-phase state (the handoff is durable); a sketch from any live state (nothing durable
# came of the last attempt, e.g. a colocated replica that died mid-render holds no handoff).
RESUME_STATE = {"sketch": S.QUEUED, "render": S.HANDED_OFF}
RESUMABLE_FROM = {
    "sketch": frozenset({S.QUEUED, S.ENCODING, S.SKETCHING, S.HANDED_OFF, S.RENDERING, S.DECODING}),
    "render": frozenset({S.HANDED_OFF, S.RENDERING, S.DECODING}),
}


def can_move(current: JobState, requested: JobState) -> bool:
    """True for an allowed transition, and for staying in a live state (progress within it)."""
    if requested == current:
        return current not in TERMINAL_STATES
    return requested in ALLOWED[current]


def next_stage(state: JobState, has_handoff: bool) -> str | None:
    """The stage an attempt must run for a live job: render once a handoff is durable, else sketch."""
    if state in TERMINAL_STATES:
        return None
    return "render" if has_handoff else "sketch"
