"""Shared fixtures: one tiny model pair and one engine per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from srserve.engine.tiny import write_tiny_wan_pair

    root = tmp_path_factory.mktemp("tiny-wan")
    write_tiny_wan_pair(root)
    return root


@pytest.fixture(scope="session")
def tiny_config(tiny_root: Path):
    from srserve.engine import ModelPairConfig

    return ModelPairConfig.tiny(tiny_root)


@pytest.fixture(scope="session")
def engine(tiny_config):
    from srserve.engine import SRDiffusionEngine

    torch.set_num_threads(1)
    return SRDiffusionEngine(tiny_config)


@pytest.fixture(scope="session")
def wan_pipe(tiny_config, engine):
    """diffusers' own WanPipeline over the same folders: the parity reference."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_config.sketch_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe
