"""Malformed requests over HTTP and gRPC: each gets a clear client error; replicas never crash."""

from __future__ import annotations

import hashlib
import json
import struct

import grpc
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srserve.client import GenerationFailed, SrserveClient
from srserve.client.grpc_client import make_request
from srserve.engine import GenerationRequest
from tests.serving_helpers import get, post, wait_state
from tests.test_serving_grpc import admitted
from tests.test_serving_http import submit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grpc_client(serving) -> SrserveClient:
    with SrserveClient(serving.grpc, serving.app_name) as c:
        yield c


@pytest.fixture(scope="module")
def handoff_blob(engine) -> bytes:
    return engine.generate(
        GenerationRequest(prompt="uploaded", num_inference_steps=6, switch="fixed:3", seed=4)
    ).handoff


HTTP_TABLE = [
    ({"prompt": 123}, 400, "prompt"),
    ({"negative_prompt": "x"}, 400, "prompt"),  # missing prompt
    ({"prompt": "x" * 4001}, 400, "prompt"),
    ({"prompt": "x", "width": 4096}, 400, "width"),
    ({"prompt": "x", "height": -16}, 400, "height"),
    ({"prompt": "x", "num_frames": 1000}, 400, "num_frames"),
    ({"prompt": "x", "num_inference_steps": "many"}, 400, "num_inference_steps"),
    ({"prompt": "x", "switch": "adaptive:2.0"}, 400, "switch"),
    ({"prompt": "x", "switch": {"kind": "fixed"}}, 400, "switch"),
    ({"prompt": "x", "model": "wan-99b"}, 400, "model"),
    ({"prompt": "x", "seed": 1.5}, 400, "seed"),
    ({"prompt": "x", "fps": 0}, 400, "fps"),
    ({"prompt": ["a", "b"]}, 400, "prompt"),
]


@pytest.mark.parametrize(("body", "status", "field"), HTTP_TABLE)
def test_http_table(serving, body: dict, status: int, field: str) -> None:
    r = post(serving.http, "/v1/videos", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert field in error["message"] and error["code"] == "invalid_argument"


def test_http_handoff_uploads(serving, handoff_blob: bytes, engine) -> None:
    for blob, needle in [(b"garbage", "handoff"), (b"", "handoff"), (_with_version(handoff_blob, 7), "version 7")]:
        r = requests.post(
            serving.http + "/v1/handoffs", data=blob, timeout=30, headers={"content-type": "application/octet-stream"}
        )
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    good = submit(serving.http, None, "/v1/handoffs", data=handoff_blob)
    done = wait_state(serving.http, good["id"])
    assert done["status"] == "completed" and done["srserve"]["switch_step"] == 3
    local = engine.generate(GenerationRequest(prompt="uploaded", num_inference_steps=6, switch="fixed:3", seed=4))
    assert done["srserve"]["latents_sha256"] == hashlib.sha256(local.latents.float().numpy().tobytes()).hexdigest()


def _with_version(blob: bytes, version: int) -> bytes:
    size = struct.unpack("<Q", blob[:8])[0]
    raw = json.loads(blob[8 : 8 + size])
    header = json.loads(raw["__metadata__"]["srserve.handoff"])
    header["version"] = version
    raw["__metadata__"]["srserve.handoff"] = json.dumps(header)
    new = json.dumps(raw).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + blob[8 + size :]


GRPC_TABLE = [
    ({"prompt": "x", "width": 4000}, grpc.StatusCode.INVALID_ARGUMENT, "width"),
    ({"prompt": "x", "num_inference_steps": 0}, grpc.StatusCode.INVALID_ARGUMENT, "num_inference_steps"),
    ({"prompt": "x", "switch": "fixed:-1"}, grpc.StatusCode.INVALID_ARGUMENT, "switch"),
    ({"prompt": "x" * 5000}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    ({"prompt": "x" * (2 << 20)}, grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds"),
]


@pytest.mark.parametrize(("fields", "code", "needle"), GRPC_TABLE)
def test_grpc_table(grpc_client: SrserveClient, fields: dict, code, needle: str) -> None:
    prompt = fields.pop("prompt")
    with pytest.raises(GenerationFailed) as info:
        grpc_client.submit(make_request(prompt, **fields))
    assert info.value.code == code and needle in info.value.details


def test_grpc_unknown_model_garbage_bytes_and_handoffs(grpc_client, serving, handoff_blob: bytes) -> None:
    msg = make_request("x")
    msg.model = "sora-2"
    with pytest.raises(GenerationFailed) as info:
        grpc_client.submit(msg)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "model" in info.value.details

    with grpc.insecure_channel(serving.grpc) as channel:
        raw = channel.unary_unary("/srserve.v1.VideoGeneration/Submit")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xfe garbage bytes", metadata=(("application", serving.app_name),), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "GenerateRequest" in err.value.details()

    for blob, needle in [(b"\x00" * 16, "handoff"), (_with_version(handoff_blob, 9), "version 9")]:
        with pytest.raises(GenerationFailed) as info:
            grpc_client.render_handoff(blob)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and needle in info.value.details
    job = admitted(lambda: grpc_client.render_handoff(handoff_blob))
    assert job.state == "handed_off" and job.switch_step == 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "prompt",
                "height",
                "width",
                "num_frames",
                "num_inference_steps",
                "seed",
                "switch",
                "size",
                "seconds",
                "guidance_scale",
                "fps",
                "model",
                "extra",
            ]
        ),
        st.one_of(
            st.none(),
            st.integers(-(10**20), 10**20),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=30),
            st.booleans(),
            st.lists(st.integers(), max_size=3),
        ),
        max_size=6,
    )
)
def test_http_never_500s_on_arbitrary_bodies(serving, body: dict) -> None:
    r = post(serving.http, "/v1/videos", json={**body, "num_inference_steps": 1} if "prompt" in body else body)
    assert r.status_code in (200, 400, 413, 429), (body, r.status_code, r.text)
    if r.status_code == 200:
        post(serving.http, f"/v1/videos/{r.json()['id']}/cancel")
    else:
        assert r.json()["error"]["message"]


def test_replicas_survived_all_of_it(serving) -> None:
    from ray import serve

    deployments = serve.status().applications[serving.app_name].deployments
    assert all(d.status == "HEALTHY" for d in deployments.values()), deployments
    job = submit(serving.http, {"prompt": "still fine", "num_inference_steps": 4})
    assert wait_state(serving.http, job["id"])["status"] == "completed"
    assert get(serving.http, "/health").json()["status"] == "ok"
