"""NVML sampling of the suite's GPU while it runs, with each part's window summarised.

The replicas' sampler, `srserve.serving.ops.gpu_telemetry.NvmlDevices`, is used where it imports.
It cannot on the GPU machine: that module imports the serving metrics module, which imports
`ray.serve.metrics` at its top, and Ray is not there (its wheel alone is over the 64 MiB a command
may carry). There this module reads the same NVML fields itself, on nvidia-ml-py (`pynvml`), which
the machine has. `source` in the results says which of the two sampled.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

FIELDS = (
    "utilization_pct",
    "memory_used_bytes",
    "memory_total_bytes",
    "power_w",
    "temperature_c",
    "sm_clock_mhz",
    "memory_clock_mhz",
)


@dataclass(frozen=True)
class Reading:
    """One sample of the suite's GPU; None where the device does not report a field."""

    t: float
    utilization_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_w: float | None
    temperature_c: float | None
    sm_clock_mhz: float | None
    memory_clock_mhz: float | None


class _OwnNvml:
    """The Ray-free reader: the suite's GPU by the UUID torch reports (index 0 when torch has none)."""

    def __init__(self, torch_uuid: str | None) -> None:
        import pynvml  # nvidia-ml-py

        self.nvml = pynvml
        pynvml.nvmlInit()
        handle = None
        if torch_uuid:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(torch_uuid)
            except pynvml.NVMLError:
                handle = None
        self.handle = handle if handle is not None else pynvml.nvmlDeviceGetHandleByIndex(0)

    def _read(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(self.handle, *args)
        except self.nvml.NVMLError:
            return None

    def sample(self) -> dict[str, Any]:
        nvml = self.nvml
        util = self._read(nvml.nvmlDeviceGetUtilizationRates)
        mem = self._read(nvml.nvmlDeviceGetMemoryInfo)
        power_mw = self._read(nvml.nvmlDeviceGetPowerUsage)
        return {
            "utilization_pct": None if util is None else float(util.gpu),
            "memory_used_bytes": None if mem is None else int(mem.used),
            "memory_total_bytes": None if mem is None else int(mem.total),
            "power_w": None if power_mw is None else power_mw / 1000.0,
            "temperature_c": self._read(nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": self._read(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
            "memory_clock_mhz": self._read(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM),
        }

    def close(self) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()


class _ProjectNvml:
    """srserve's replica sampler (needs Ray importable), reduced to the suite's one GPU."""

    def __init__(self, devices: Any) -> None:
        self.devices = devices

    def sample(self) -> dict[str, Any]:
        first = self.devices.sample()[0]
        return {name: getattr(first, name) for name in FIELDS}

    def close(self) -> None:
        self.devices.close()


def _torch_device_uuid() -> tuple[str | None, int | None]:
    """(NVML-style UUID, index) of torch's current CUDA device, or (None, None) without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    index = torch.cuda.current_device()
    return "GPU-" + str(torch.cuda.get_device_properties(index).uuid), index


class NvmlSampler:
    """A daemon thread that samples every `interval_s` until stopped; never fails the suite."""

    def __init__(self, interval_s: float = 0.5, prefer: str = "project") -> None:
        self.interval_s = interval_s
        self.prefer = prefer
        self.readings: list[Reading] = []
        self.available = False
        self.source = "none"
        self.reason = "not started"
        self.notes: list[str] = []
        self._reader: _OwnNvml | _ProjectNvml | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _open(self) -> None:
        uuid, index = _torch_device_uuid()
        if self.prefer == "project":
            try:
                from srserve.serving.ops.gpu_telemetry import NvmlDevices, NvmlUnavailable
            except Exception as exc:  # ImportError for Ray; anything else from a serving tree in flux
                self.notes.append(f"srserve.serving.ops.gpu_telemetry does not import here ({exc!r}); own NVML reader")
            else:
                try:
                    ids = None if index is None else [uuid or str(index)]
                    self._reader = _ProjectNvml(NvmlDevices(ids))
                    self.source = "srserve.serving.ops.gpu_telemetry.NvmlDevices"
                    return
                except NvmlUnavailable as exc:
                    self.reason = str(exc)
                    return
        try:
            self._reader = _OwnNvml(uuid)
            self.source = "benchmarks/gpu/nvml_sampler.py (pynvml)"
        except Exception as exc:  # ImportError (no nvidia-ml-py) or NVMLError (no driver)
            self.reason = f"NVML unavailable: {exc!r}"

    def start(self) -> NvmlSampler:
        self._open()
        if self._reader is None:
            return self
        self.available, self.reason = True, "sampling"
        self._sample()
        self._thread = threading.Thread(target=self._run, name="suite-nvml", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        assert self._reader is not None
        values = self._reader.sample()
        with self._lock:
            self.readings.append(Reading(t=time.monotonic(), **values))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception as exc:  # a sampling failure ends sampling, not the suite
                self.reason = f"sampling stopped: {exc!r}"
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Mean and max of each field over the readings in [start, end] (monotonic seconds)."""
        with self._lock:
            inside = [r for r in self.readings if start <= r.t <= end]
        out: dict[str, Any] = {"samples": len(inside)}
        for name in ("utilization_pct", "power_w", "sm_clock_mhz", "temperature_c", "memory_used_bytes"):
            values = [getattr(r, name) for r in inside if getattr(r, name) is not None]
            if values:
                out[f"{name}_mean"] = statistics.fmean(values)
                out[f"{name}_max"] = max(values)
        return out

    def report(self, t0: float) -> dict[str, Any]:
        """Everything sampled, as columns with times relative to `t0`."""
        with self._lock:
            rows = [asdict(r) for r in self.readings]
        columns = {name: [row[name] for row in rows] for name in FIELDS}
        return {
            "available": self.available,
            "source": self.source,
            "reason": self.reason,
            "notes": self.notes,
            "interval_s": self.interval_s,
            "t_s": [round(row["t"] - t0, 3) for row in rows],
            **columns,
        }
