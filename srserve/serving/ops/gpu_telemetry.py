"""GPU telemetry: each GPU replica samples the GPUs Ray gave it through NVML (nvidia-ml-py).

Every `interval_s` a background thread reads utilization, memory used/total, power, temperature
and the SM/memory clocks of each of the replica's GPUs and sets the `srserve_gpu_*` gauges
(srserve.serving.ops.metrics). Without NVML (no driver, CPU-only machine) or without a GPU assigned,
it says so once in the log, exports `srserve_gpu_telemetry_available 0` and serving carries on.
Gauges are re-set at least every GAUGE_REFRESH_S even when nothing changes: Ray's metrics agent
drops a gauge series that has not been refreshed for two export intervals (20 s by default).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from srserve.serving.config.telemetry import GpuTelemetryConfig
from srserve.serving.ops import metrics

logger = logging.getLogger("ray.serve")

# Reasons already logged in this process: "NVML is absent" is said once, however many samplers start.
_REPORTED: set[str] = set()
_REPORTED_LOCK = threading.Lock()
# Re-export the last values this often, whatever the sampling interval (see the module docstring).
GAUGE_REFRESH_S = 5.0


@dataclass(frozen=True)
class GpuSample:
    """One reading of one GPU; a field is None when the device does not report it."""

    index: int
    uuid: str
    name: str
    utilization_pct: float | None
    memory_utilization_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_w: float | None
    temperature_c: float | None
    sm_clock_mhz: float | None
    memory_clock_mhz: float | None


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here (library or driver absent, no device); the message says why."""


def assigned_gpus() -> list[str] | None:
    """The GPU ids this process owns: Ray's assignment inside a Ray worker, else CUDA_VISIBLE_DEVICES;
    None means every GPU on the machine. An empty list means no GPU at all."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        return [str(g) for g in ray.get_gpu_ids()]  # a replica: what Ray assigned to it
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]


def _torch_uuid(local_index: int) -> str | None:
    """NVML-style UUID of CUDA device `local_index` as torch sees it (robust to device ordering)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return "GPU-" + str(torch.cuda.get_device_properties(local_index).uuid)
    except Exception:
        return None


def _read(fn: Callable[[], Any]) -> Any:
    """One NVML field; None when the device does not support it."""
    import pynvml

    try:
        return fn()
    except pynvml.NVMLError:
        return None


class NvmlDevices:
    """NVML handles of the given GPUs (`ids` from assigned_gpus()); opens NVML or raises NvmlUnavailable."""

    def __init__(self, ids: Sequence[str] | None) -> None:
        try:
            import pynvml
        except ImportError as exc:  # nvidia-ml-py is a dependency; an odd install may lack it
            raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML unavailable: {exc}") from None
        try:
            self.handles = self._resolve(ids)
        except (pynvml.NVMLError, ValueError) as exc:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable(f"NVML could not open the assigned GPUs {ids}: {exc}") from None
        if not self.handles:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable("NVML reports no GPU for this process")

    def _resolve(self, ids: Sequence[str] | None) -> list[tuple[int, Any]]:
        nvml = self._nvml
        if ids is None:
            return [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(nvml.nvmlDeviceGetCount())]
        handles = []
        for local, gpu in enumerate(ids):
            uuid = gpu if gpu.startswith(("GPU-", "MIG-")) else _torch_uuid(local)
            handle = None
            if uuid is not None:
                handle = _read(lambda u=uuid: nvml.nvmlDeviceGetHandleByUUID(u))
            if handle is None:
                handle = nvml.nvmlDeviceGetHandleByIndex(int(gpu))  # ValueError for an unknown UUID
            handles.append((int(gpu) if gpu.isdigit() else local, handle))
        return handles

    def sample(self) -> list[GpuSample]:
        nvml = self._nvml
        out = []
        for index, h in self.handles:
            util = _read(lambda h=h: nvml.nvmlDeviceGetUtilizationRates(h))
            mem = _read(lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h))
            power_mw = _read(lambda h=h: nvml.nvmlDeviceGetPowerUsage(h))
            name = _read(lambda h=h: nvml.nvmlDeviceGetName(h)) or "unknown"
            uuid = _read(lambda h=h: nvml.nvmlDeviceGetUUID(h)) or ""
            out.append(
                GpuSample(
                    index=index,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                    name=name.decode() if isinstance(name, bytes) else name,
                    utilization_pct=None if util is None else float(util.gpu),
                    memory_utilization_pct=None if util is None else float(util.memory),
                    memory_used_bytes=None if mem is None else int(mem.used),
                    memory_total_bytes=None if mem is None else int(mem.total),
                    power_w=None if power_mw is None else power_mw / 1000.0,
                    temperature_c=_read(lambda h=h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                    sm_clock_mhz=_read(lambda h=h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
                    memory_clock_mhz=_read(lambda h=h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)),
                )
            )
        return out

    def close(self) -> None:
        _read(self._nvml.nvmlShutdown)


def _report_once(reason: str, pool: str) -> None:
    with _REPORTED_LOCK:
        if reason in _REPORTED:
            return
        _REPORTED.add(reason)
    logger.warning("GPU telemetry off for pool %s: %s; serving carries on without GPU metrics", pool, reason)


class GpuTelemetry:
    """The sampler of one replica: a daemon thread that exports a sample every `interval_s`."""

    def __init__(self, pool: str, config: GpuTelemetryConfig | None = None, gpu_ids: list[str] | None = None) -> None:
        self.pool = pool
        self.config = config or GpuTelemetryConfig()
        self.gpu_ids = assigned_gpus() if gpu_ids is None else gpu_ids
        self.available = False
        self.reason = "not started"
        self.last: list[GpuSample] = []
        self._devices: NvmlDevices | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> bool:
        """Open NVML for this replica's GPUs; False (logged once) when there is nothing to sample."""
        if self._devices is not None:
            return True
        if self.gpu_ids is not None and not self.gpu_ids:
            self.reason = "no GPU assigned to this replica"
        else:
            try:
                self._devices = NvmlDevices(self.gpu_ids)
                self.available, self.reason = True, "sampling"
            except NvmlUnavailable as exc:
                self.reason = str(exc)
        metrics.record_gpu_available(self.pool, self.available)
        if not self.available:
            _report_once(self.reason, self.pool)
        return self.available

    def sample_once(self) -> list[GpuSample]:
        """Read and export one sample of every GPU of the replica ([] without NVML)."""
        if self._devices is None:
            return []
        self.last = self._devices.sample()
        metrics.record_gpu_samples(self.pool, self.last)
        return self.last

    def start(self) -> GpuTelemetry:
        if not self.config.enabled or self._thread is not None:
            return self
        self.open()
        self._thread = threading.Thread(target=self._run, name=f"gpu-telemetry-{self.pool}", daemon=True)
        self._thread.start()
        return self

    def update(self, config: GpuTelemetryConfig) -> None:
        """Apply a changed config (Serve `reconfigure`) without restarting the replica."""
        self.config = config
        if not config.enabled:
            self.stop()
            return
        self._wake.set()
        self.start()

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.is_set():
            try:
                metrics.record_gpu_available(self.pool, self.available)
                if time.monotonic() >= next_sample:
                    self.sample_once()
                    next_sample = time.monotonic() + self.config.interval_s
                else:  # keep the last sample's series alive between samples
                    metrics.record_gpu_samples(self.pool, self.last)
            except Exception as exc:  # a sampling failure must never take the replica down
                _report_once(f"GPU sampling failed: {exc}", self.pool)
            self._wake.wait(min(self.config.interval_s, GAUGE_REFRESH_S))
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._stop.clear()
        if self._devices is not None:
            self._devices.close()
            self._devices = None
            self.available = False
