"""The two ways the load generator talks to srserve: gRPC (srserve.v1) and HTTP (/v1/videos).

Both give the same `JobView`s, so the runner does not care which API it drives. Listing recent
jobs lets one call refresh many in-flight jobs (a cheap poll on a small machine).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

import grpc
import requests

from srserve.client.grpc_client import GenerationFailed, SrserveClient, make_request
from srserve.serving.proto import video_pb2

TERMINAL = ("completed", "failed", "cancelled")


class Rejected(Exception):
    """The server refused the job for lack of room (HTTP 429 / gRPC RESOURCE_EXHAUSTED)."""


class SubmitError(Exception):
    """The server refused the request for another reason (bad input, server error)."""


@dataclass
class JobView:
    id: str
    state: str
    timeline: dict[str, float] = field(default_factory=dict)
    switch_step: int | None = None
    num_steps: int = 0
    replicas: dict[str, str] = field(default_factory=dict)
    switch_reason: str | None = None
    error_code: str | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class Target(Protocol):
    api: str

    def submit(self, fields: dict[str, Any]) -> JobView: ...
    def get(self, job_id: str) -> JobView: ...
    def recent(self, limit: int) -> list[JobView]: ...
    def close(self) -> None: ...


def _from_grpc(job: video_pb2.Job) -> JobView:
    return JobView(
        id=job.id,
        state=job.state,
        timeline=dict(job.timeline),
        switch_step=None if job.switch_step < 0 else job.switch_step,
        num_steps=job.num_steps,
        replicas=dict(job.replicas),
        switch_reason=job.switch_reason or None,
        error_code=job.error_code or None,
        error=job.error or None,
    )


class GrpcTarget:
    api = "grpc"

    def __init__(self, address: str, application: str = "srserve", timeout_s: float = 60.0) -> None:
        self.client = SrserveClient(address, application, timeout_s=timeout_s)

    def submit(self, fields: dict[str, Any]) -> JobView:
        fields = dict(fields)
        prompt = fields.pop("prompt")
        try:
            return _from_grpc(self.client.submit(make_request(prompt, **fields)))
        except GenerationFailed as exc:
            if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise Rejected(exc.details) from None
            raise SubmitError(str(exc)) from None

    def get(self, job_id: str) -> JobView:
        return _from_grpc(self.client.get_job(job_id))

    def recent(self, limit: int) -> list[JobView]:
        return [_from_grpc(j) for j in self.client.list_jobs(limit=limit, order="desc").jobs]

    def close(self) -> None:
        self.client.close()


def _from_http(video: dict[str, Any]) -> JobView:
    s = video["srserve"]
    err = video.get("error") or {}
    return JobView(
        id=video["id"],
        state=s["state"],
        timeline=s.get("timeline", {}),
        switch_step=s.get("switch_step"),
        num_steps=s.get("num_steps", 0),
        replicas=s.get("replicas", {}),
        switch_reason=s.get("switch_reason"),
        error_code=err.get("code"),
        error=err.get("message"),
    )


class HttpTarget:
    api = "http"

    def __init__(self, base_url: str, timeout_s: float = 60.0) -> None:
        self.base = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def submit(self, fields: dict[str, Any]) -> JobView:
        resp = self._session().post(f"{self.base}/v1/videos", json=fields, timeout=self.timeout_s)
        if resp.status_code in (429, 503):
            raise Rejected(resp.text[:300])
        if resp.status_code != 200:
            raise SubmitError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        return _from_http(resp.json())

    def get(self, job_id: str) -> JobView:
        resp = self._session().get(f"{self.base}/v1/videos/{job_id}", timeout=self.timeout_s)
        resp.raise_for_status()
        return _from_http(resp.json())

    def recent(self, limit: int) -> list[JobView]:
        resp = self._session().get(
            f"{self.base}/v1/videos", params={"limit": limit, "order": "desc"}, timeout=self.timeout_s
        )
        resp.raise_for_status()
        return [_from_http(v) for v in resp.json()["data"]]

    def close(self) -> None:
        if hasattr(self._local, "session"):
            self._local.session.close()


def connect(target: str, application: str = "srserve") -> GrpcTarget | HttpTarget:
    """`grpc://HOST:PORT`, `http(s)://HOST:PORT` or a bare `HOST:PORT` (gRPC)."""
    if target.startswith(("http://", "https://")):
        return HttpTarget(target)
    if target.startswith("grpc://"):
        target = target.removeprefix("grpc://")
    parsed = urlparse(f"//{target}")
    if not parsed.hostname or not parsed.port:
        raise ValueError(f"target: expected grpc://HOST:PORT or http://HOST:PORT, got {target!r}")
    return GrpcTarget(target, application)
