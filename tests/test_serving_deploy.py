"""Deploy paths: the Serve config file and its refusals (the text pool, S3 artifacts and `srserve serve`
with Ctrl-C drain are served in tests/test_faults.py, on apps that exist there anyway)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from srserve.serving.app import app_builder
from srserve.serving.config import DeployFile

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_yaml_is_a_valid_serve_config_and_an_srserve_config() -> None:
    raw = yaml.safe_load((ROOT / "deploy" / "tiny.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.applications[0].import_path == "srserve.serving.app:app_builder"
    spec = DeployFile.from_yaml(ROOT / "deploy" / "tiny.yaml")
    assert (spec.http_port, spec.grpc_port, spec.serving.app_name) == (8000, 9000, "srserve")
    assert spec.serving.sketch_pool.num_replicas == 1 and spec.serving.render_pool.num_replicas == 1
    app = app_builder(raw["applications"][0]["args"])
    assert type(app).__name__ == "Application"


def test_bad_config_is_refused_by_field(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nsketch_pool: {num_replicas: 0}\n")
    with pytest.raises(ValueError, match="num_replicas"):
        DeployFile.from_yaml(bad)
    bad.write_text("model: tiny\ntext_encoder_placement: gpu9\n")
    with pytest.raises(ValueError, match="text_encoder_placement"):
        DeployFile.from_yaml(bad)
