"""Tiny random-weight model pairs, written in Diffusers format so they load like real checkpoints."""

from srserve.engine.tiny.cogvideox import TinyCogVideoXSpec, write_tiny_cogvideox_pair
from srserve.engine.tiny.wan import TinyWanSpec, write_tiny_wan_pair
from srserve.engine.tiny.wan22 import TinyWan22Spec, write_tiny_wan22_pair, write_tiny_wan22_ti2v

__all__ = [
    "TinyCogVideoXSpec",
    "TinyWan22Spec",
    "TinyWanSpec",
    "write_tiny_cogvideox_pair",
    "write_tiny_wan22_pair",
    "write_tiny_wan22_ti2v",
    "write_tiny_wan_pair",
]
