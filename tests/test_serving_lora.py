"""LoRA adapters per request, served end to end: the tiny Wan2.1 pair with `make-tiny --loras` files on its
own app of the session's cluster, its render pool two replicas that keep one adapter each. Served videos
equal the in-process engine's with the same adapter (and a job without one equals the plain engine's:
nothing leaks); Serve's multiplexing keeps a repeated adapter on the replica that holds it, and that
replica's engine holds what Serve says it holds; an unknown adapter is refused naming `lora` over both
APIs; a replica killed mid-render costs nothing (another one loads the adapter, same bytes)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import ray
import torch

from srserve.engine import GenerationRequest, ModelPairConfig, SRDiffusionEngine
from srserve.engine.tiny.lora import RENDER_LORA, SKETCH_LORA, SKETCH_LORA_COMFY, write_tiny_loras
from tests.serving_helpers import get, post, wait_done, wait_state

pytestmark = pytest.mark.slow

APP = "lora"
BODY = {"prompt": "a paper boat on a river", "num_inference_steps": 4, "switch": "fixed:2", "seed": 5}


@pytest.fixture(scope="module")
def lora_pair(tmp_path_factory: pytest.TempPathFactory, tiny_config: ModelPairConfig) -> ModelPairConfig:
    """The session's tiny pair with four adapters: one for both models, two render-only, one sketch-only."""
    out: Path = tmp_path_factory.mktemp("serving-loras")
    write_tiny_loras(out, tiny_config.sketch_path, tiny_config.render_path)
    adapters = {
        "ink": {"sketch": str(out / SKETCH_LORA), "render": str(out / RENDER_LORA), "scale": 0.8},
        "wash": {"render": str(out / RENDER_LORA), "scale": 0.5},
        "dusk": {"render": str(out / RENDER_LORA), "scale": 0.3},
        "sketchy": {"sketch": str(out / SKETCH_LORA_COMFY)},
    }
    return ModelPairConfig.model_validate({**tiny_config.model_dump(), "num_threads": 1, "adapters": adapters})


@pytest.fixture(scope="module")
def lora_app(serving, lora_pair: ModelPairConfig):
    """The app: one sketch replica, two render replicas holding one adapter each (short leases, so a killed
    replica's job is taken over quickly)."""
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import IngressConfig, PoolConfig, ServingConfig

    config = ServingConfig(
        app_name=APP,
        model=lora_pair,
        sketch_pool=PoolConfig(num_replicas=1, ray_actor_options={"num_cpus": 0.25}),
        render_pool=PoolConfig(num_replicas=2, adapter_cache_size=1, ray_actor_options={"num_cpus": 0.25}),
        ingress=IngressConfig(lease_ttl_s=3.0, claim_interval_s=0.5, default_deadline_s=900),
    ).resolved()
    assert config.ingress.adapter_routing == "multiplexed"  # the default: what the routing tests below hold to
    serve.run(build_app(config), name=APP, route_prefix=f"/{APP}")
    yield serving.http + f"/{APP}"
    serve.delete(APP)


@pytest.fixture(scope="module")
def reference(lora_pair: ModelPairConfig) -> SRDiffusionEngine:
    torch.set_num_threads(1)
    return SRDiffusionEngine(lora_pair)


def _engine_video(engine: SRDiffusionEngine, **fields) -> bytes:
    return engine.generate(GenerationRequest(**{**BODY, **fields})).video


def _run(base: str, **fields) -> dict:
    """One job over HTTP, to completion."""
    job = post(base, "/v1/videos", json={**BODY, **fields}).json()
    done = wait_done(base, job["id"])
    assert done["status"] == "completed", done
    return done


def _count(base: str) -> int:
    return len(get(base, "/v1/videos?limit=1000").json()["data"])


def test_served_adapters_equal_the_engine_and_nothing_leaks(serving, lora_app, reference, engine) -> None:
    from srserve.client import SrserveClient
    from srserve.client.grpc_client import make_request

    done = _run(lora_app, lora="ink")
    assert done["srserve"]["lora"] == {"name": "ink", "scale": 0.8, "sketch": True, "render": True, "fused": False}
    assert get(lora_app, f"/v1/videos/{done['id']}/content").content == _engine_video(reference, lora="ink")

    # gRPC, a sketch-only adapter at another scale: the render pool runs without one, and the job says so.
    fields = {k: v for k, v in BODY.items() if k != "prompt"}
    with SrserveClient(serving.grpc, application=APP) as client:
        result = client.generate(make_request(BODY["prompt"], lora="sketchy:0.5", **fields))
        job = client.get_job(result.job.id)
    assert result.mp4 == _engine_video(reference, lora="sketchy:0.5")
    assert (job.lora.name, job.lora.scale, job.lora.sketch, job.lora.render) == ("sketchy", 0.5, True, False)

    # The next job without an adapter runs the base layers, as an engine that never loaded one.
    plain = _run(lora_app)
    assert plain["srserve"]["lora"] is None
    assert get(lora_app, f"/v1/videos/{plain['id']}/content").content == _engine_video(engine)


def _render_replica(base: str, **fields) -> str:
    return _run(base, **fields)["srserve"]["replicas"]["render"]


def test_a_repeated_adapter_stays_on_the_replica_that_holds_it(lora_app) -> None:
    from ray import serve

    ink = _render_replica(lora_app, lora="ink")
    assert _render_replica(lora_app, lora="ink", seed=6) == ink
    wash = _render_replica(lora_app, lora="wash")
    assert wash != ink  # no replica held it: the one holding fewer adapters loaded it
    assert _render_replica(lora_app, lora="ink", seed=7) == ink
    assert _render_replica(lora_app, lora="wash", seed=8) == wash

    # A third adapter evicts one replica's (capacity 1); the other keeps its own.
    dusk = _render_replica(lora_app, lora="dusk")
    kept, kept_at = ("wash", wash) if dusk == ink else ("ink", ink)
    assert _render_replica(lora_app, lora=kept, seed=9) == kept_at
    assert _render_replica(lora_app, lora="dusk", seed=10) == dusk
    # That replica's engine holds what Serve's multiplexing says it holds: the evicted adapter was unloaded.
    render = serve.get_deployment_handle("RenderWorker", app_name=APP)
    stats = render.options(multiplexed_model_id="dusk").stats.remote().result()
    assert stats["replica"] == dusk, stats
    adapters = stats["adapters"]
    assert adapters["held"] == ["dusk"] and adapters["loaded"] == {"render": ["dusk"]}, adapters
    assert adapters["evictions"] >= 1 and adapters["capacity"] == 1, adapters


def test_an_unknown_adapter_is_refused_naming_lora(serving, lora_app) -> None:
    from srserve.client import SrserveClient
    from srserve.client.grpc_client import GenerationFailed, make_request

    published = get(lora_app, "/openapi.json").json()["components"]["schemas"]["VideoCreateParams"]["properties"]
    assert "ink" in published["lora"]["pattern"] and "sketchy" in published["lora"]["pattern"]
    before = _count(lora_app)
    r = post(lora_app, "/v1/videos", json={**BODY, "lora": "nope"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "lora" and "unknown adapter 'nope'" in error["message"], error
    assert "dusk, ink, sketchy, wash" in error["message"], error
    path = post(lora_app, "/v1/videos", json={**BODY, "lora": "/models/ink.safetensors"})
    assert path.status_code == 400 and path.json()["error"]["param"] == "lora", path.text
    with SrserveClient(serving.grpc, application=APP) as client, pytest.raises(GenerationFailed) as err:
        client.submit(make_request(BODY["prompt"], lora="nope"))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "lora" in err.value.details
    assert "unknown adapter 'nope'" in err.value.details
    assert _count(lora_app) == before

    # A deployment whose pair has no adapters refuses any, and does not publish the field.
    r = post(serving.http, "/v1/videos", json={**BODY, "lora": "ink"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "lora", r.text
    assert "this model pair has: none" in r.json()["error"]["message"]
    plain = get(serving.http, "/openapi.json").json()["components"]["schemas"]["VideoCreateParams"]["properties"]
    assert "lora" not in plain


def _kill_replica(deployment: str, replica_id: str) -> None:
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if name.startswith("SERVE_REPLICA::") and name.endswith(f"{APP}#{deployment}#{replica_id}"):
            ray.kill(ray.get_actor(name, namespace=actor["namespace"]), no_restart=True)
            return
    raise AssertionError(f"no replica {replica_id} of {deployment}")


def test_the_replica_holding_the_adapter_dies_mid_render(lora_app, reference) -> None:
    fields = {"num_inference_steps": 40, "switch": "fixed:1", "seed": 12, "lora": "ink"}
    job = post(lora_app, "/v1/videos", json={**BODY, **fields}).json()

    def rendering(j: dict) -> bool:
        return j["srserve"]["state"] == "rendering" and j["srserve"]["step"] >= 3

    running = wait_state(lora_app, job["id"], timeout_s=600, until=rendering)  # or a final state: said below
    assert running["srserve"]["state"] == "rendering", running
    victim = running["srserve"]["replicas"]["render"]
    _kill_replica("RenderWorker", victim)
    done = wait_done(lora_app, job["id"])
    assert done["status"] == "completed", done
    assert done["srserve"]["replicas"]["render"] != victim  # another replica loaded the adapter and rendered
    assert done["srserve"]["attempts"] == {"sketch": 1, "render": 2}, done["srserve"]
    assert done["srserve"]["lora"]["name"] == "ink"
    assert get(lora_app, f"/v1/videos/{job['id']}/content").content == _engine_video(reference, **fields)
