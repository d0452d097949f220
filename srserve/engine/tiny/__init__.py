"""Tiny random-weight model pairs, written in Diffusers format so they load like real checkpoints."""

from srserve.engine.tiny.wan import TinyWanSpec, write_tiny_wan_pair

__all__ = ["TinyWanSpec", "write_tiny_wan_pair"]
