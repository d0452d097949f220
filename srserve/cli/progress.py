"""Terminal progress bars for the engine's per-step progress callback."""

from __future__ import annotations

import sys

from tqdm import tqdm


def quiet_loading_bars() -> None:
    """Turn off diffusers' and transformers' loading bars: for local folders they are noise next to srserve's
    own per-stage bars. Commands call it where they load models (it imports both libraries, seconds)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


class StageBars:
    """One tqdm bar per stage, created when the stage reports its first step."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bars: dict[str, tqdm] = {}
        self._start: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self._bars.get(stage)
        if bar is None:
            self._start[stage] = done - 1
            bar = self._bars[stage] = tqdm(total=total, initial=done - 1, desc=f"{stage:>7}", unit="step", leave=True)
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
