"""Moved to srserve.workload.arrivals; kept only for tests/test_wan22.py and tests/test_serving_parallel.py."""

from srserve.workload.arrivals import PoissonArrivals

__all__ = ["PoissonArrivals"]
