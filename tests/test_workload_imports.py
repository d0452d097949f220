"""`srserve plan` and the planner load no serving runtime, web framework or load generator: what they
share with the load generator lives in srserve.workload. Checked in a fresh interpreter, since this
session's other tests import everything."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("fastapi", "ray.serve", "srserve.loadgen", "srserve.serving.app", "srserve.serving.api")

CHECK = f"""
import sys
import srserve.cli.plan
import srserve.planner.search, srserve.planner.simulator, srserve.planner.serve_config
import srserve.planner.measure, srserve.planner.validate
loaded = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))
print("\\n".join(loaded))
"""


def test_the_planner_imports_no_serving_runtime_and_no_loadgen() -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [], f"loaded by the planner: {proc.stdout.split()}"
