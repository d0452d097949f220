"""LoRA adapters at the serving layer's edges, without a cluster: the `lora` field over HTTP and gRPC, the
deployment's published pattern, the job's adapter in the Video object and the gRPC Job, the token Serve's
multiplexing evicts, and the start-up refusals (a file that does not fit its model, compile with switched
adapters). Served end to end: tests/test_serving_lora.py."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path

import jsonschema_rs
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from srserve.client.grpc_client import make_request
from srserve.engine import ModelPairConfig
from srserve.engine.adapters.spec import AdapterConfig, LoraSpec, lora_pattern
from srserve.serving.api.grpc import generate_request, job_message
from srserve.serving.api.http import openapi_document, video_object
from srserve.serving.api.schemas import Video, create_request
from srserve.serving.config import ConfigError, PoolConfig, ServingConfig
from srserve.serving.control.errors import InvalidRequest
from srserve.serving.launcher import check_model
from srserve.serving.pools.worker import AdapterToken

MODEL = "tiny-wan2.1"
ADAPTERS = {
    "style": AdapterConfig(sketch="s.safetensors", render="r.safetensors", scale=0.8),
    "big": AdapterConfig(sketch="s.safetensors"),
}


def test_http_create_body_takes_a_name_never_a_file() -> None:
    request, _ = create_request({"prompt": "x", "lora": "style:0.5"}, MODEL, 4)
    assert request.lora == LoraSpec(name="style", scale=0.5)
    assert create_request({"prompt": "x"}, MODEL, 4)[0].lora is None
    for bad in ("/models/x.safetensors", "a.b", "style:9", "style :1", ""):
        with pytest.raises(InvalidRequest) as err:
            create_request({"prompt": "x", "lora": bad}, MODEL, 4)
        assert err.value.param == "lora" and "NAME or NAME:SCALE" in str(err.value), bad


def test_openapi_publishes_the_deployments_adapters() -> None:
    def valid(doc: dict, body: dict) -> bool:
        return jsonschema_rs.validator_for(doc["components"]["schemas"]["VideoCreateParams"]).is_valid(body)

    plain = openapi_document(MODEL)  # a pair without adapters: the schema refuses any, as the server does
    assert "lora" not in plain["components"]["schemas"]["VideoCreateParams"]["properties"]
    assert not valid(plain, {"prompt": "x", "lora": "style"})
    doc = openapi_document(MODEL, lora_pattern=lora_pattern(ADAPTERS))
    spec = doc["components"]["schemas"]["VideoCreateParams"]["properties"]["lora"]
    assert spec["type"] == "string" and spec["pattern"] == lora_pattern(ADAPTERS)
    for text, ok in (("style", True), ("big:1.5", True), ("style:4", True), ("nope", False), ("style:5", False)):
        assert valid(doc, {"prompt": "x", "lora": text}) == ok, text
    i2v = openapi_document(MODEL, takes_image=True, lora_pattern=lora_pattern(ADAPTERS))
    assert i2v["components"]["schemas"]["VideoCreateForm"]["properties"]["lora"] == spec


def test_grpc_request_takes_lora_and_the_cli_sends_it() -> None:
    request, _ = generate_request(make_request("x", lora="big:0.3"), MODEL, 4)
    assert request.lora == LoraSpec(name="big", scale=0.3)
    assert generate_request(make_request("x"), MODEL, 4)[0].lora is None
    with pytest.raises(InvalidRequest) as err:
        generate_request(make_request("x", lora="../x.safetensors"), MODEL, 4)
    assert err.value.param == "lora"


def _job(lora: dict | None) -> dict:
    request = {"prompt": "x", "num_frames": 17, "width": 64, "height": 64, "fps": 16, "cache": None, "lora": lora}
    return {
        "id": "video_" + "0" * 32,
        "state": "completed",
        "progress": 100,
        "step": 4,
        "total": 4,
        "num_steps": 4,
        "switch_step": 2,
        "created_at": 1.0,
        "completed_at": 2.0,
        "request": request,
    }


def test_the_job_shows_its_adapter_and_which_models_ran_it() -> None:
    big = {"name": "big", "scale": 1.0, "sketch": True, "render": False, "fused": False}
    shown = video_object(_job(big), MODEL)
    assert Video.model_validate(shown).srserve.lora is not None  # fits the published response schema
    assert shown["srserve"]["lora"] == big  # a sketch-only adapter: the render ran without one
    assert video_object(_job(None), MODEL)["srserve"]["lora"] is None
    msg = job_message(_job(big))
    assert msg.HasField("lora") and (msg.lora.name, msg.lora.scale, msg.lora.sketch, msg.lora.render) == (
        "big",
        1.0,
        True,
        False,
    )
    assert json.loads(msg.request_json)["lora"] == big
    assert not job_message(_job(None)).HasField("lora")


def test_serves_eviction_of_a_token_unloads_the_adapter() -> None:
    """Serve awaits a multiplexed model's `__del__` when its LRU evicts it (coroutine functions are awaited)."""
    unloaded: list[str] = []

    async def unload(name: str) -> None:
        unloaded.append(name)

    token = AdapterToken("style", unload)
    assert inspect.iscoroutinefunction(token.__del__)
    asyncio.run(token.__del__())
    assert unloaded == ["style"]
    del token  # the garbage collector never calls the instance attribute
    assert unloaded == ["style"]


@pytest.fixture()
def misfit(tmp_path: Path) -> Path:
    """A LoRA file for a module the tiny transformer does not have."""
    path = tmp_path / "misfit.safetensors"
    module = "transformer.blocks.0.attn1.to_nothing"
    save_file({f"{module}.lora_A.weight": torch.zeros(4, 8), f"{module}.lora_B.weight": torch.zeros(8, 4)}, path)
    return path


def test_a_file_that_does_not_fit_is_refused_at_start_up(tiny_config: ModelPairConfig, misfit: Path) -> None:
    pair = ModelPairConfig.model_validate({**tiny_config.model_dump(), "adapters": {"odd": {"sketch": str(misfit)}}})
    with pytest.raises(ConfigError) as err:
        check_model(ServingConfig(model=pair), "serve.yaml")
    message = str(err.value)
    assert message.startswith("serve.yaml: model.adapters: adapter 'odd' (sketch file")
    assert "module 'blocks.0.attn1.to_nothing'" in message


def test_a_pool_compiling_switched_adapters_is_refused(tiny_config: ModelPairConfig) -> None:
    pair = ModelPairConfig.model_validate({**tiny_config.model_dump(), "adapters": ADAPTERS})
    with pytest.raises(ValidationError, match=r"render_pool\.compile: adapters big, style are switched per job"):
        ServingConfig(model=pair, render_pool=PoolConfig(compile=True))
    fused = {name: {**a.model_dump(), "fuse": True} for name, a in ADAPTERS.items()}
    fused_pair = ModelPairConfig.model_validate({**tiny_config.model_dump(), "adapters": fused})
    ServingConfig(model=fused_pair, render_pool=PoolConfig(compile=True))
