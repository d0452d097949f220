"""A short soak on the session deployment: above capacity, nothing lost, memory and object store bounded."""

from __future__ import annotations

import pytest
import ray

from srserve.loadgen.soak import measure_capacity, run_soak

pytestmark = pytest.mark.slow


def test_soak_above_capacity_loses_nothing(serving) -> None:
    body = {"prompt": "soak", "num_inference_steps": 8, "switch": "fixed:3"}
    capacity = measure_capacity(serving.http, body)
    report = run_soak(
        serving.http,
        serving.app_name,
        ray.get_runtime_context().gcs_address,
        body,
        capacity,
        overload=1.2,
        duration_s=30,
        drain_timeout_s=300,
    )
    assert report.sent == report.accepted + report.refused + report.errors
    assert report.errors == 0, report.failures
    assert report.lost == 0 and report.failed == 0 and report.completed == report.accepted, report.failures
    before, after = report.memory_before, report.memory_after
    assert after.plasma_objects <= before.plasma_objects  # no handoff object outlives its job
    for replica, rss in after.replica_rss_mib.items():
        if replica in before.replica_rss_mib:
            assert rss < before.replica_rss_mib[replica] * 1.5 + 200, (replica, before, after)
