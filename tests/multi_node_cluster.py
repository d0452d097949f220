"""A real multi-node Ray cluster on this machine: a head and worker nodes started with `ray start`, each its
own raylet with its own processes, so a node can be killed (its raylet and every worker it runs) and
replaced as a machine would be. Each worker node offers one custom resource (`sketch_node`, ...) that pins
a pool to it. The pytest process never joins it (it is connected to the session's own cluster): scripts
run as subprocesses (`run_driver`), and the tests speak HTTP to its Serve proxy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """Nodes of one Ray cluster, as separate `ray start` processes, all under `root` (its temp dir)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ray_start(self, *args: str) -> None:
        out = subprocess.run([RAY, "start", *args], env=self.env, capture_output=True, text=True, timeout=180)
        if out.returncode:
            raise RuntimeError(f"ray start {' '.join(args)} failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")

    def start_head(self, resource: str, num_cpus: float) -> None:
        self._ray_start(
            "--head",
            f"--port={self.port}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps({resource: 1})}",
            "--include-dashboard=false",
            f"--temp-dir={self.root}",
            "--disable-usage-stats",
        )

    def add_node(self, resource: str, num_cpus: float) -> None:
        """Start a worker node offering `resource` (a replacement for a killed one too)."""
        resources = json.dumps({resource: 1})
        self._ray_start(f"--address={self.address}", f"--num-cpus={num_cpus}", f"--resources={resources}")

    def _raylets(self, resource: str | None = None) -> list[psutil.Process]:
        gcs = re.compile(rf"--gcs-address=\S+:{self.port}(\s|$)")
        out = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if "raylet/raylet" not in cmdline or not gcs.search(cmdline):
                continue
            if resource is None or re.search(rf"_resource_list=(\S*,)?{resource},", cmdline):
                out.append(process)
        return out

    def node_processes(self, resource: str) -> list[psutil.Process]:
        """A worker node's processes: its raylet, everything the raylet runs (replicas, agents), and the log
        monitor `ray start` started beside it (its log files carry the raylet's index: raylet.N, log_monitor.N)."""
        out = []
        for raylet in self._raylets(resource):
            out += [raylet, *raylet.children(recursive=True)]
            index = re.search(r"/raylet\.(\d+)\.out", " ".join(raylet.cmdline()))
            if index is not None:
                mark = f"/log_monitor.{index.group(1)}.out"
                out += [p for p in psutil.process_iter(["cmdline"]) if mark in " ".join(p.info["cmdline"] or [])]
        return out

    def kill_node(self, resource: str) -> int:
        """SIGKILL every process of the node offering `resource`, as a machine that loses power; returns how many."""
        processes = self.node_processes(resource)
        assert processes, f"no running node offers {resource}"
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(processes, timeout=30)
        return len(processes)

    def processes(self) -> list[psutil.Process]:
        """Every process of the cluster: those naming its temp dir or GCS port, and their descendants."""
        marks = (str(self.root), f":{self.port}")
        roots = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if any(mark in cmdline for mark in marks) and process.pid != os.getpid():
                roots.append(process)
        seen = {p.pid: p for root in roots for p in (root, *root.children(recursive=True))}
        return list(seen.values())

    def stop(self) -> None:
        """Kill the whole cluster (never `ray stop`: that would stop the session's own cluster too)."""
        for _ in range(3):
            processes = self.processes()
            if not processes:
                return
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGKILL)
            psutil.wait_procs(processes, timeout=30)
            time.sleep(0.5)  # a process spawned between the listing and the kill is caught next round

    def run_driver(self, script: str, *args: str, timeout_s: float = 600) -> str:
        """Run a Python script that connects to this cluster (`ray.init(address=sys.argv[1])`); its stdout."""
        out = subprocess.run(
            [sys.executable, "-c", script, self.address, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if out.returncode:
            raise RuntimeError(f"driver failed ({out.returncode}): {out.stdout[-3000:]}\n{out.stderr[-5000:]}")
        return out.stdout
