"""Tiny random-weight model pairs, written in Diffusers format so they load like real checkpoints."""

from srserve.engine.tiny.cogvideox import TinyCogVideoXSpec, write_tiny_cogvideox_pair
from srserve.engine.tiny.wan import TinyWanSpec, write_tiny_wan_pair

__all__ = ["TinyCogVideoXSpec", "TinyWanSpec", "write_tiny_cogvideox_pair", "write_tiny_wan_pair"]
