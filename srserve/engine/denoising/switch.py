"""Deciding, step by step, when the sketch model hands over to the render model."""

from __future__ import annotations

import math

import torch

from srserve.engine.request import SwitchPolicy


def self_difference(prediction: torch.Tensor, previous: torch.Tensor) -> float:
    """SRDiffusion's d_k = tanh(mean|o_k - o_{k-1}| / max(mean|o_{k-1}|, 1e-6))."""
    cur, prev = prediction.float(), previous.float()
    num = (cur - prev).abs().mean().item()
    den = max(prev.abs().mean().item(), 1e-6)
    return math.tanh(num / den)


class SwitchDecider:
    """Per-request switch state.

    The sketch runs `sketch_steps` large-model steps. A fixed policy sets that number up front.
    The adaptive policy observes the large model's CFG-combined prediction o_k once per step k
    and hands over after step k (so k+1 sketch steps) at the first k with k+1 >= min_step and
    0 < s_k < tau, where s_k = d_{k-1} - d_k; at the latest after max_step steps.
    """

    def __init__(self, policy: SwitchPolicy, num_steps: int) -> None:
        self.policy = policy
        self.num_steps = num_steps
        if policy.kind == "fixed":
            self.min_steps = self.max_steps = min(policy.fixed_step(num_steps), num_steps)
        else:
            self.min_steps, self.max_steps = policy.bounds(num_steps)
        self.trace: list[float] = []  # d_k for k >= 1
        self._previous: torch.Tensor | None = None

    def done_before(self, steps_done: int) -> bool:
        """True when no further sketch step may run."""
        return steps_done >= self.max_steps

    def observe(self, step: int, prediction: torch.Tensor) -> bool:
        """Feed o_step; True means hand over now (after this step)."""
        if self.policy.kind == "fixed":
            return False
        fire = False
        if self._previous is not None:
            d = self_difference(prediction, self._previous)
            if self.trace:
                s = self.trace[-1] - d
                fire = step + 1 >= self.min_steps and 0.0 < s < self.policy.tau
            self.trace.append(d)
        self._previous = prediction.detach().clone()
        return fire
