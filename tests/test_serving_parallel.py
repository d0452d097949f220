"""Multi-device pools served end to end on the session's Ray cluster.

deploy/tiny-parallel.yaml (sketch replicas of 2 Ulysses ranks, gloo), its render pool CFG-parallel 2, runs
beside the session's one-device app (deploy/tiny.yaml's pair): the same prompt and seed give the same mp4,
byte for byte; a cancel stops every rank; a rank killed mid-job takes its replica down, and the job
completes on the replica Serve starts instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import yaml

from srserve.serving.config import DeployFile, PoolConfig, ServingConfig
from tests.serving_helpers import TERMINAL, get, post, wait_done, wait_state

ROOT = Path(__file__).resolve().parents[1]
BODY = {"prompt": "a lighthouse in a storm", "seed": 11, "num_inference_steps": 12, "switch": "fixed:6"}


def _deploy(name: str, path: Path, render_parallel, **ingress: float) -> str:
    """The application of a deploy file under its own name and route prefix, its render pool run at
    `render_parallel`; returns its base URL path."""
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import DeployFile

    config = DeployFile.from_yaml(path).serving
    render = config.render_pool.model_copy(update={"parallel": render_parallel})
    config = config.model_copy(
        update={"app_name": name, "render_pool": render, "ingress": config.ingress.model_copy(update=ingress)}
    )
    serve.run(build_app(config), name=name, route_prefix=f"/{name}")
    return f"/{name}"


@pytest.fixture(scope="module")
def apps(serving):
    """(the one-device app, one more app on the session cluster): deploy/tiny-parallel.yaml (sketch Ulysses 2)
    with its render pool CFG-parallel 2, so each pool runs its own degree and kind; short leases.

    The one-device reference is the session's app: the same tiny pair as deploy/tiny.yaml (written from a
    fixed seed), its replicas one torch thread each as Ray's workers are."""
    from ray import serve

    from srserve.engine.parallel import ParallelSpec

    parallel = serving.http + _deploy(
        "parallel",
        ROOT / "deploy" / "tiny-parallel.yaml",
        render_parallel=ParallelSpec(cfg=2),
        lease_ttl_s=3.0,
        claim_interval_s=0.5,
    )
    yield serving.http, parallel
    serve.delete("parallel")


def _generate(base: str, body: dict, timeout_s: float = 600) -> tuple[dict, bytes]:
    r = post(base, "/v1/videos", json=body)
    assert r.status_code == 200, r.text
    job = wait_done(base, r.json()["id"], timeout_s)
    assert job["status"] == "completed", (job["error"], job["srserve"])
    content = get(base, f"/v1/videos/{job['id']}/content")
    assert content.status_code == 200, content.text
    return job, content.content


def _rank_actors(app: str, deployment: str = "SketchWorker") -> list[tuple[str, str]]:
    """The named rank actors (ranks 1..) of the app's replicas of `deployment`."""
    out = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("srserve-rank:") and f"{app}#{deployment}#" in actor["name"]:
            out.append((actor["name"], actor["namespace"]))
    return out


@pytest.mark.slow
def test_parallel_pools_serve_the_same_video_bytes(apps) -> None:
    """Sketch Ulysses 2, render CFG 2 (each pool its own degree and kind): still the one-device video."""
    plain, parallel = apps
    job_a, video_a = _generate(plain, BODY)
    job_b, video_b = _generate(parallel, BODY)
    assert job_b["srserve"]["latents_sha256"] == job_a["srserve"]["latents_sha256"]
    assert job_b["srserve"]["switch_step"] == job_a["srserve"]["switch_step"] == 6
    assert video_b == video_a
    assert len(_rank_actors("parallel")) == 1  # ranks 1.. of one replica of Ulysses 2
    assert len(_rank_actors("parallel", "RenderWorker")) == 1  # and of one replica of CFG 2


@pytest.mark.slow
def test_cancel_stops_every_rank_at_a_step_and_the_replica_serves_on(apps) -> None:
    """Rank 0 decides and broadcasts at each step boundary: after a cancel mid-sketch the same replica's
    ranks are still in step, so the next job's video is still the one-device video, byte for byte."""
    plain, parallel = apps
    slow = {**BODY, "seed": 13, "num_inference_steps": 60, "switch": "fixed:60"}
    r = post(parallel, "/v1/videos", json=slow)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    wait_state(
        parallel,
        job_id,
        until=lambda j: j["srserve"]["state"] == "sketching" and j["srserve"]["step"] >= 2,
        timeout_s=300,
    )
    assert post(parallel, f"/v1/videos/{job_id}/cancel").json()["srserve"]["state"] == "cancelled"
    follower, video = _generate(parallel, BODY)
    final = get(parallel, f"/v1/videos/{job_id}").json()
    assert final["srserve"]["state"] == "cancelled" and final["srserve"]["step"] < 60
    assert follower["srserve"]["replicas"]["sketch"] == final["srserve"]["replicas"]["sketch"]
    assert video == _generate(plain, BODY)[1]


@pytest.mark.slow
def test_a_rank_killed_mid_job_takes_its_replica_down_and_the_job_completes(apps) -> None:
    plain, parallel = apps
    body = {**BODY, "seed": 12, "num_inference_steps": 40, "switch": "fixed:36"}
    r = post(parallel, "/v1/videos", json=body)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    wait_state(
        parallel,
        job_id,
        until=lambda j: (
            (j["srserve"]["state"] == "sketching" and (j["srserve"].get("step") or 0) >= 2)
            or j["srserve"]["state"] in TERMINAL
        ),
        timeout_s=300,
    )
    (name, namespace), *_ = _rank_actors("parallel")
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    job = wait_done(parallel, job_id)
    assert job["status"] == "completed", (job["error"], job["srserve"])
    assert job["srserve"]["attempts"]["sketch"] >= 2, job["srserve"]
    assert _rank_actors("parallel") and _rank_actors("parallel")[0][0] != name  # a fresh replica, fresh ranks
    _, reference = _generate(plain, body)
    assert get(parallel, f"/v1/videos/{job_id}/content").content == reference


# -- the config files (no cluster) ---------------------------------------------------------------
def test_a_parallel_pool_reserves_one_bundle_per_rank_on_one_node() -> None:
    pool = PoolConfig(
        ray_actor_options={"num_cpus": 4, "num_gpus": 1, "accelerator_type": "H100"}, parallel={"ulysses": 2, "cfg": 2}
    )
    options = pool.deployment_options()
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["placement_group_bundles"] == [{"CPU": 4.0, "GPU": 1.0, "accelerator_type:H100": 0.001}] * 4
    assert "placement_group_bundles" not in PoolConfig().deployment_options()  # one device: no placement group
    with pytest.raises(ValueError, match="only sketch_pool and render_pool"):
        ServingConfig(text_encoder_placement="pool", text_pool=PoolConfig(parallel={"cfg": 2}))


def test_tiny_parallel_is_tiny_with_a_ulysses_2_sketch_pool() -> None:
    plain = DeployFile.from_yaml(ROOT / "deploy" / "tiny.yaml").serving
    parallel = DeployFile.from_yaml(ROOT / "deploy" / "tiny-parallel.yaml").serving
    assert parallel.sketch_pool.parallel.ulysses == 2 and parallel.sketch_pool.parallel.world_size == 2
    assert parallel.model == plain.model == "tiny"
    assert parallel.render_pool == plain.render_pool
    assert parallel.sketch_pool.model_copy(update={"parallel": plain.sketch_pool.parallel}) == plain.sketch_pool


def test_the_wan_parallel_config_and_its_rayservice_fit_each_other() -> None:
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_ray_resources_from_group_spec

    spec = DeployFile.from_yaml(ROOT / "deploy" / "wan2.1-parallel.yaml")
    sketch, render = spec.serving.sketch_pool, spec.serving.render_pool
    assert (sketch.parallel.ulysses, sketch.parallel.cfg, sketch.parallel.world_size) == (2, 2, 4)
    assert not render.parallel.enabled and render.ray_actor_options["num_gpus"] == 1
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kuberay" / "rayservice-wan2.1-parallel.yaml").read_text()))
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(
        (ROOT / "deploy" / "wan2.1-parallel.yaml").read_text()
    )
    cluster = service["spec"]["rayClusterConfig"]
    offers = {g["groupName"]: _get_ray_resources_from_group_spec(g, False) for g in cluster["workerGroupSpecs"]}
    labels = cluster["headGroupSpec"]["template"]["metadata"]["labels"]["srserve.io/service"]
    for pool in (sketch, render):
        bundles = pool.deployment_options().get("placement_group_bundles") or [
            {"CPU": pool.ray_actor_options["num_cpus"], "GPU": pool.ray_actor_options["num_gpus"]}
        ]
        kind = f"accelerator_type:{pool.ray_actor_options['accelerator_type']}"
        need = {"CPU": sum(b["CPU"] for b in bundles), "GPU": sum(b["GPU"] for b in bundles)}
        # STRICT_PACK: one pod (one Ray node) must hold a whole replica, and exactly one group serves the pool.
        groups = [n for n, r in offers.items() if r.get(kind) and all(r.get(k, 0) >= v for k, v in need.items())]
        assert len(groups) == 1, (need, offers)
        group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == groups[0])
        assert (
            pool.ray_actor_options["accelerator_type"]
            in group["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
        )
        assert group["maxReplicas"] >= pool.queue_autoscaling.max_replicas
        assert group["template"]["metadata"]["labels"]["srserve.io/service"] == labels
    assert offers["sketch-h100x4"]["GPU"] == 4
    # Serve's own check of a replica's placement group (the replica actor must fit bundle 0).
    from ray.serve._private.config import ReplicaConfig

    from srserve.serving.pools.sketch import SketchWorker

    options = sketch.deployment_options()
    ReplicaConfig.create(
        SketchWorker,
        ray_actor_options=options["ray_actor_options"],
        placement_group_bundles=options["placement_group_bundles"],
        placement_group_strategy=options["placement_group_strategy"],
    )


# -- the planner takes the degree ------------------------------------------------------------------
def _profile():
    from srserve.engine.request import RequestDefaults
    from srserve.planner.profile import DegreeCosts, DeviceKind, Profile, ShapeCosts

    shape = ShapeCosts(
        encode_s=0.5,
        large_step_s=10.0,
        small_step_s=2.0,
        decode_s=5.0,
        parallel={"u2xc2": DegreeCosts(large_step_s=3.0), "c2": DegreeCosts(small_step_s=1.2)},
    )
    return Profile(
        source="derived",
        description="a test profile with step times per parallel degree",
        model_pair="wan2.1",
        defaults=RequestDefaults(height=480, width=832, num_frames=81, num_inference_steps=50),
        kinds={"H100": DeviceKind(name="H100", accelerator_type="H100", shapes={"832x480x81": shape})},
    )


def test_the_planner_counts_a_replica_of_degree_u_x_c_as_that_many_gpus() -> None:
    from srserve.planner.search import PlanSpec, analytic_capacity, enumerate_candidates, mean_work, plan
    from srserve.planner.serve_config import serve_config
    from srserve.workload.arrivals import PoissonArrivals
    from srserve.workload.mix import RequestClass, RequestMix

    profile = _profile()
    mix = RequestMix(classes=[RequestClass(switch="fixed:10")])
    spec = PlanSpec(
        budget={"H100": 8},
        arrival=PoissonArrivals(rate=0.02),
        mix=mix,
        requests=100,
        layouts=("disaggregated",),
        parallel={"sketch": ("1", "u2xc2"), "render": ("1", "c2")},
    )
    candidates = enumerate_candidates(profile, spec)
    assert all(c.gpus <= 8 for c in candidates)
    labels = {c.label() for c in candidates}
    assert "sketch 1xH100[u2xc2] + render 4xH100" in labels and "sketch 1xH100[u2xc2] + render 2xH100[c2]" in labels
    assert "sketch 2xH100[u2xc2] + render 1xH100" not in labels  # 2 x 4 GPUs leave none to render
    (big,) = [c for c in candidates if c.label() == "sketch 1xH100[u2xc2] + render 4xH100"]
    assert big.gpus == 8
    d = profile.defaults
    assert mean_work(profile, mix, d, "sketch", "H100", parallel="u2xc2") == 0.5 + 10 * 3.0  # the degree's step
    assert mean_work(profile, mix, d, "render", "H100", parallel="c2") == 40 * 1.2 + 5.0
    assert analytic_capacity(profile, big, mix, d) == min(1 / 30.5, 4 / 85.0)
    with pytest.raises(KeyError, match="parallel degree 'u2'"):  # never a guessed speed-up
        mean_work(profile, mix, d, "sketch", "H100", parallel="u2")
    results, _ = plan(profile, spec, d)
    assert results and all(r.cluster.gpus <= 8 for r in results)
    emitted = serve_config(big, profile, model={"family": "wan2.1", "sketch_path": "/s", "render_path": "/r"})
    args = emitted["applications"][0]["args"]
    assert args["sketch_pool"]["parallel"] == {"ulysses": 2, "ring": 1, "cfg": 2}
    assert "parallel" not in args["render_pool"]
    pool = ServingConfig.model_validate(args).sketch_pool
    assert len(pool.deployment_options()["placement_group_bundles"]) == 4


def test_a_pool_degree_that_cannot_run_is_refused_before_any_replica_starts(tiny_config) -> None:
    from srserve.engine.parallel import ParallelSpec, ParallelUnsupported
    from srserve.serving.pools.ranks import check_pool_parallel

    check_pool_parallel(ParallelSpec(ulysses=2, cfg=2), tiny_config, {"num_cpus": 0.5})  # 8 and 4 heads split
    with pytest.raises(ParallelUnsupported, match="does not divide the render transformer's 4 attention heads"):
        check_pool_parallel(ParallelSpec(ulysses=8), tiny_config, {"num_cpus": 0.5})
    with pytest.raises(ParallelUnsupported, match="log-sum-exp"):  # ring on this CPU pool
        check_pool_parallel(ParallelSpec(ring=2), tiny_config, {"num_cpus": 0.5})
    auto = tiny_config.model_copy(update={"device": "auto", "attention_backend": "flash"})
    check_pool_parallel(ParallelSpec(ring=2), auto, {"num_gpus": 1})  # device auto on GPUs: CUDA, flash: allowed


def test_a_first_block_cache_is_refused_where_ranks_split_the_tokens() -> None:
    from srserve.engine.denoising.cache import CachePolicy
    from srserve.engine.parallel import ParallelSpec, ParallelUnsupported
    from srserve.serving.pools.ranks import refuse_data_dependent_cache

    with pytest.raises(ValueError, match="first_block cache cannot run with ulysses"):
        ServingConfig(sketch_pool=PoolConfig(parallel={"ulysses": 2}, cache={"kind": "first_block"}))
    with pytest.raises(ValueError, match="first_block cache cannot run with ulysses"):  # nor may a request ask
        ServingConfig(render_pool=PoolConfig(parallel={"ulysses": 2}, cache_limits={"kinds": ["none", "first_block"]}))
    ServingConfig(sketch_pool=PoolConfig(parallel={"cfg": 2}, cache={"kind": "first_block"}))  # whole sequences
    ServingConfig(sketch_pool=PoolConfig(parallel={"ulysses": 2}, cache={"kind": "taylorseer"}))  # by schedule
    with pytest.raises(ParallelUnsupported, match="ranks would diverge"):
        refuse_data_dependent_cache(ParallelSpec(ulysses=2), CachePolicy(kind="first_block"))
    refuse_data_dependent_cache(ParallelSpec(ulysses=2), None)
