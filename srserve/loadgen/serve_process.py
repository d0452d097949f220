"""`srserve serve` as a child process, for a measurement taken from outside it (HTTP, the load harness).

The process gets its own SRSERVE_HOME (so its own embedded PostgreSQL and Ray session), free ports
written into the deploy file, and is waited on until `/health` answers; afterwards it is stopped as a
user would (Ctrl-C, then a kill of its session if it does not exit) and its database server with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServeProcess:
    base: str  # http://127.0.0.1:PORT
    home: Path  # its SRSERVE_HOME (the deploy file and serve.log are there)
    env: dict[str, str]  # its environment: run other srserve commands against the same home with it


@contextlib.contextmanager
def serve_process(
    spec: dict[str, Any], num_cpus: int, prefix: str, ready_timeout_s: float = 300.0, stop_timeout_s: float = 120.0
) -> Iterator[ServeProcess]:
    """Run `srserve serve` on the deploy file `spec` (its ports replaced by free ones) until the block ends."""
    from srserve.serving.control.store.database import EmbeddedPostgres

    home = Path(tempfile.mkdtemp(prefix=prefix))
    http_port = free_port()
    spec = {**spec, "http_options": {**spec["http_options"], "port": http_port}}
    spec["grpc_options"] = {**spec["grpc_options"], "port": free_port()}
    config = home / "serve.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "SRSERVE_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    log = (home / "serve.log").open("ab")
    cmd = [sys.executable, "-m", "srserve.cli.main", "serve", str(config), "--num-cpus", str(num_cpus)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("srserve serve did not come up: " + (home / "serve.log").read_text()[-3000:])
            with contextlib.suppress(requests.RequestException):
                if requests.get(base + "/health", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        yield ServeProcess(base, home, env)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        EmbeddedPostgres(home / "postgres").stop(mode="fast")
