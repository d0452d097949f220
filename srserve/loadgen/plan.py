"""Moved to srserve.workload.plan; kept only for tests/test_wan22.py."""

from srserve.workload.plan import SloPolicy

__all__ = ["SloPolicy"]
