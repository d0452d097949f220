"""Moved to srserve.workload.mix; kept only for tests/test_wan22.py and tests/test_serving_parallel.py."""

from srserve.workload.mix import RequestClass, RequestMix

__all__ = ["RequestClass", "RequestMix"]
