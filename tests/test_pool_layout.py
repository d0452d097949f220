"""The layout as data: which pools a config deploys, where each stage goes, what admission and load count."""

from __future__ import annotations

from srserve.loadgen.shape import device_count, replicas_per_pool
from srserve.serving.config import IngressConfig, PoolConfig, ServingConfig, StageRoute
from srserve.serving.control.attempts import StageTicket
from srserve.serving.ingress import stage_call_options
from srserve.serving.pools.colocated import ColocatedWorker
from srserve.serving.pools.render import RenderWorker
from srserve.serving.pools.sketch import SketchWorker
from srserve.serving.pools.text import TextEncoderWorker

SKETCH = PoolConfig(num_replicas=2, max_backlog=5)
RENDER = PoolConfig(num_replicas=3, max_backlog=7, ray_actor_options={"num_gpus": 0.5})
TEXT = PoolConfig(num_replicas=1, max_backlog=9)
COLOCATED = PoolConfig(num_replicas=4, max_backlog=11, ray_actor_options={"num_gpus": 1})


def _config(**kw) -> ServingConfig:
    return ServingConfig(sketch_pool=SKETCH, render_pool=RENDER, text_pool=TEXT, colocated_pool=COLOCATED, **kw)


def test_disaggregated_layout_routes_each_stage_to_its_own_pool() -> None:
    layout = _config().pool_layout()
    assert layout.kind == "disaggregated" and list(layout.pools) == ["sketch", "render"]
    assert layout.routes == {
        "sketch": StageRoute("sketch", "sketch", ("sketch",), takes_prompt=True),
        "render": StageRoute("render", "render", ("render",)),
    }
    assert layout.encoder is None and not layout.shared
    assert layout.pool("sketch") is SKETCH and layout.pool("render") is RENDER
    assert [(b.pool, b.phases, b.max_jobs) for b in layout.backlogs()] == [
        ("sketch", {"sketch"}, 5),
        ("render", {"render"}, 7),
    ]
    assert layout.replica_floors() == (2, 3)


def test_a_text_pool_encodes_before_the_sketch_in_either_layout() -> None:
    for kind in ("disaggregated", "colocated"):
        layout = _config(layout=kind, text_encoder_placement="pool").pool_layout()
        assert layout.encoder == "text" and layout.pools["text"] is TEXT
        assert all(b.pool != "text" for b in layout.backlogs())  # admission counts the pools that run phases


def test_colocated_layout_runs_both_phases_on_one_pool() -> None:
    layout = _config(layout="colocated").pool_layout()
    assert list(layout.pools) == ["colocated"] and layout.shared
    # A job's sketch stage runs the whole job; an uploaded handoff's render stage runs there too.
    assert layout.routes == {
        "sketch": StageRoute("colocated", "generate", ("sketch", "render"), takes_prompt=True),
        "render": StageRoute("colocated", "render", ("render",)),
    }
    assert layout.pool("sketch") is COLOCATED and layout.pool("render") is COLOCATED
    assert [(b.pool, b.phases, b.max_jobs) for b in layout.backlogs()] == [("colocated", {"sketch", "render"}, 11)]
    assert layout.replica_floors() == (4, 4)


def test_every_route_names_a_method_of_its_pools_worker() -> None:
    """The app deploys these classes per pool name; each route's method exists on it."""
    workers = {"sketch": SketchWorker, "render": RenderWorker, "colocated": ColocatedWorker, "text": TextEncoderWorker}
    for kind in ("disaggregated", "colocated"):
        layout = _config(layout=kind, text_encoder_placement="pool").pool_layout()
        for route in layout.routes.values():
            assert callable(getattr(workers[route.pool], route.method)), route
        assert callable(workers[layout.encoder].encode)
        for name in layout.pools:
            assert workers[name].pool_name == name  # what the replica reports its telemetry and queue under


def test_load_harness_reads_pools_and_devices_from_the_layout() -> None:
    assert replicas_per_pool(_config()) == {"sketch": 2, "render": 3}
    assert replicas_per_pool(_config(layout="colocated")) == {"colocated": 4}
    assert device_count(_config()) == 2 * 1.0 + 3 * 0.5  # CPU-only pools count one device per replica
    assert device_count(_config(layout="colocated", text_encoder_placement="pool")) == 4 * 1 + 1 * 1.0


def test_a_jobs_adapter_is_routed_by_the_models_each_stage_runs() -> None:
    """The multiplexed model id of a stage: the job's adapter when that stage's models apply it per job."""
    both = {"name": "both", "scale": 0.8, "sketch": True, "render": True, "fused": False}
    big = {**both, "name": "big", "render": False}
    fused = {**both, "name": "baked", "fused": True}
    split = _config().pool_layout().routes
    colocated = _config(layout="colocated").pool_layout().routes

    def ids(routes, lora):
        ticket = StageTicket("video_" + "0" * 32, 1, {"prompt": "x", "lora": lora})
        return {stage: ticket.adapter(route.sides) for stage, route in routes.items()}

    assert ids(split, both) == {"sketch": "both", "render": "both"}
    assert ids(split, big) == {"sketch": "big", "render": None}  # the render pool runs without one
    assert ids(colocated, big) == {"sketch": "big", "render": None}  # generate runs both models
    assert ids(split, fused) == ids(split, None) == {"sketch": None, "render": None}


def test_adapter_routing_none_calls_the_pool_without_a_model_id() -> None:
    """The options `_run_stage` calls a pool with: the adapter as Serve's multiplexed model id by default; none
    under `adapter_routing: none` (the benchmark's baseline), nor for a stage without a per-job adapter."""
    assert IngressConfig().adapter_routing == "multiplexed"
    assert stage_call_options("ink", "multiplexed") == {"multiplexed_model_id": "ink"}
    assert stage_call_options(None, "multiplexed") == {}
    assert stage_call_options("ink", "none") == stage_call_options(None, "none") == {}
    assert _config(ingress=IngressConfig(adapter_routing="none")).ingress.adapter_routing == "none"


def test_a_pools_adapter_capacity_applies_to_its_model(tiny_config) -> None:
    pool = PoolConfig(adapter_cache_size=1)
    assert pool.model_for(tiny_config).adapter_cache_size == 1
    assert PoolConfig().model_for(tiny_config) is tiny_config
