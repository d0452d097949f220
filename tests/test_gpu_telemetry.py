"""GPU telemetry through the real nvidia-ml-py: on a machine without NVML (this CPU-only one) the
sampler says so once and carries on; on a GPU machine the same tests read real samples."""

from __future__ import annotations

import logging
import time

import pynvml
import pytest

from srserve.serving.config import GpuTelemetryConfig
from srserve.serving.ops import gpu_telemetry
from srserve.serving.ops.gpu_telemetry import GpuTelemetry, NvmlDevices, NvmlUnavailable, assigned_gpus


def _nvml_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


NVML = _nvml_present()


@pytest.fixture
def serve_log(caplog):
    """Records of the `ray.serve` logger (Serve may stop it propagating to the root logger)."""
    logger = logging.getLogger("ray.serve")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ray.serve")
    gpu_telemetry._REPORTED.clear()
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.mark.skipif(NVML, reason="NVML is present: the sampling test below runs instead")
def test_without_nvml_the_sampler_reports_once_and_carries_on(serve_log) -> None:
    with pytest.raises(NvmlUnavailable, match="NVML unavailable"):
        NvmlDevices(["0"])
    samplers = [GpuTelemetry("render", GpuTelemetryConfig(interval_s=0.01), gpu_ids=["0"]) for _ in range(3)]
    for sampler in samplers:
        sampler.start()
    time.sleep(0.1)
    for sampler in samplers:
        assert not sampler.available and "NVML" in sampler.reason
        assert sampler.sample_once() == []
        assert sampler._thread.is_alive()  # carries on: keeps exporting "unavailable"
        sampler.stop()
    warnings = [r.getMessage() for r in serve_log.records if "GPU telemetry off" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per process, however many samplers
    assert "pool render" in warnings[0] and "carries on" in warnings[0]


@pytest.mark.skipif(not NVML, reason="needs NVML and a GPU (CPU-only here)")
def test_with_nvml_each_assigned_gpu_is_sampled() -> None:
    sampler = GpuTelemetry("sketch", GpuTelemetryConfig(interval_s=0.05), gpu_ids=None).start()
    try:
        samples = sampler.sample_once()
        assert sampler.available and samples
        for s in samples:
            assert s.uuid.startswith(("GPU-", "MIG-")) and s.name
            assert 0 < s.memory_used_bytes <= s.memory_total_bytes
            assert s.utilization_pct is None or 0 <= s.utilization_pct <= 100
            assert s.temperature_c is None or 0 < s.temperature_c < 120
            assert s.sm_clock_mhz is None or s.sm_clock_mhz > 0
    finally:
        sampler.stop()


def test_a_replica_without_a_gpu_does_not_sample(serve_log) -> None:
    sampler = GpuTelemetry("text", GpuTelemetryConfig(interval_s=0.01), gpu_ids=[]).start()
    time.sleep(0.05)
    assert not sampler.available and sampler.reason == "no GPU assigned to this replica"
    assert sampler.sample_once() == []
    sampler.stop()
    assert sum("no GPU assigned" in r.getMessage() for r in serve_log.records) == 1


def test_disabled_telemetry_starts_nothing() -> None:
    sampler = GpuTelemetry("render", GpuTelemetryConfig(enabled=False), gpu_ids=["0"]).start()
    assert sampler.reason == "not started" and sampler._thread is None


def test_assigned_gpus_outside_ray_follow_cuda_visible_devices(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert assigned_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert assigned_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert assigned_gpus() is None
