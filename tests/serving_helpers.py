"""Small helpers shared by the serving tests (HTTP over requests, waiting on jobs)."""

from __future__ import annotations

import time
from typing import Any

import requests

TERMINAL = ("completed", "failed", "cancelled")


def post(base: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.post(base + path, timeout=30, **kwargs)


def get(base: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(base + path, timeout=30, **kwargs)


def wait_state(
    base: str, job_id: str, states: tuple[str, ...] = TERMINAL, timeout_s: float = 120, until=None
) -> dict[str, Any]:
    """Poll a job until its srserve state is in `states` (or `until(job)` holds)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        response = get(base, f"/v1/videos/{job_id}")
        assert response.status_code == 200, (job_id, response.status_code, response.text)
        job = response.json()
        if job["srserve"]["state"] in states or (until is not None and until(job)):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not reach {states} in {timeout_s}s: {job}")


def wait_done(base: str, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    """Wait for a final state, riding out a restarting ingress or replica (connection refused, 503)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            r = get(base, f"/v1/videos/{job_id}")
        except requests.RequestException:
            time.sleep(0.5)
            continue
        if r.status_code == 200 and r.json()["srserve"]["state"] in TERMINAL:
            return r.json()
        assert r.status_code in (200, 503), (r.status_code, r.text)
        time.sleep(0.2)
    raise TimeoutError(job_id)
