"""Every deploy file is valid for the tool that reads it: Serve configs against Ray Serve's own schema
(with import paths that resolve and args that are a valid ServingConfig), each KubeRay RayService
(its serveConfigV2 is its Serve config, its worker groups give each pool its GPU kind), the
image-to-video configs' step prices (the planner profiles') and image limits, and the Grafana
dashboard (every srserve metric it plots exists)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import ray.serve
import yaml
from ray._common.utils import import_attr
from ray.autoscaler._private.kuberay.autoscaling_config import _get_ray_resources_from_group_spec
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from srserve.planner.profile import Profile
from srserve.profiling.flops import PEAK_BF16_TFLOPS
from srserve.serving.app import app_builder
from srserve.serving.config import APP_IMPORT_PATH, GRPC_SERVICER_FUNCTIONS, DeployFile
from srserve.serving.launcher import check_model
from srserve.serving.ops.metrics import _metrics

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIGS = sorted((ROOT / "deploy").glob("*.yaml"))
KUBERAY = ROOT / "deploy" / "kuberay"
DASHBOARD = ROOT / "deploy" / "grafana" / "srserve-dashboard.json"


def _check_serve_config(raw: dict, where: str) -> ServeDeploySchema:
    schema = ServeDeploySchema.model_validate(raw)  # Ray Serve's own schema, as `serve deploy` uses it
    for fn in schema.grpc_options.grpc_servicer_functions:
        assert callable(import_attr(fn)), f"{where}: {fn}"
    assert schema.grpc_options.grpc_servicer_functions == GRPC_SERVICER_FUNCTIONS
    (app,) = schema.applications
    assert app.import_path == APP_IMPORT_PATH and import_attr(app.import_path) is app_builder
    application = app_builder(app.args)  # args validate as a ServingConfig; the graph binds (no weights load)
    assert type(application).__name__ == "Application"
    return schema


@pytest.fixture
def database_url(embedded_db, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a cluster's Secret would hold: a DSN in SRSERVE_DATABASE_URL (the embedded server's here)."""
    monkeypatch.setenv("SRSERVE_DATABASE_URL", embedded_db.ensure_running("deploy_configs"))


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_files(path: Path, database_url: None) -> None:
    raw = yaml.safe_load(path.read_text())
    _check_serve_config(raw, path.name)
    spec = DeployFile.from_yaml(path)
    for name in ("sketch_pool", "render_pool"):
        pool = getattr(spec.serving, name)
        options = pool.deployment_options()
        if "autoscaling_config" in options:  # Serve's own validation, policy import path resolved
            config = AutoscalingConfig(**options["autoscaling_config"])
            assert callable(config.policy.get_policy())


def test_grafana_dashboard_plots_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    ours = {m._name for m in _metrics().values()}
    ray_serve = Path(ray.serve.__file__).parent
    serve_source = "\n".join(p.read_text() for p in (ray_serve / "_private").glob("*.py"))
    plotted = {name for e in exprs for name in re.findall(r"\bray_(\w+?)(?:_bucket|_sum|_count)?\b(?=[{\[(\s])", e)}
    assert plotted, exprs
    for name in plotted:
        if name.startswith("srserve_"):
            assert name in ours, name
        else:
            assert f'"{name}"' in serve_source, name  # a metric Ray Serve defines
    assert {"srserve_stage_seconds", "srserve_pool_queue_gpu_seconds", "srserve_gpu_utilization_percent"} <= plotted


# (RayService manifest, the Serve config it embeds): the pools of one kind apart by accelerator type...
BY_ACCELERATOR = [
    ("rayservice-wan2.1.yaml", "wan2.1.yaml"),
    ("rayservice-wan2.1-i2v.yaml", "wan2.1-i2v.yaml"),
    ("rayservice-wan2.1-vace.yaml", "wan2.1-vace.yaml"),
]
# ... and the expert pools (the same GPU kind) apart by a custom resource each.
BY_RESOURCE = [
    ("rayservice-wan2.2.yaml", "wan2.2.yaml"),
    ("rayservice-wan2.2-i2v.yaml", "wan2.2-i2v.yaml"),
]
PAIRS = BY_ACCELERATOR + BY_RESOURCE
# Every manifest with the config it embeds (the parallel one's groups: tests/test_serving_parallel.py).
EMBEDDED = [*PAIRS, ("rayservice-wan2.1-parallel.yaml", "wan2.1-parallel.yaml")]


def _pair_ids(pair: tuple[str, str]) -> str:
    return pair[0].removesuffix(".yaml")


@pytest.mark.parametrize(
    ("name", "family", "sketch", "render", "kinds"),
    [
        ("wan2.1.yaml", "wan2.1", "Wan2.1-T2V-14B-Diffusers", "Wan2.1-T2V-1.3B-Diffusers", ("H100", "L40S")),
        (
            "wan2.1-i2v.yaml",
            "wan2.1-i2v",
            "Wan2.1-I2V-14B-480P-Diffusers",
            "Wan2.1-Fun-1.3B-InP-Diffusers",
            ("H200", "L40S"),
        ),
        (
            "wan2.1-vace.yaml",
            "wan2.1-vace",
            "Wan2.1-VACE-14B-diffusers",
            "Wan2.1-VACE-1.3B-diffusers",
            ("H200", "L40S"),
        ),
    ],
)
def test_the_wan_config_puts_each_pool_on_its_gpu_kind(
    name: str, family: str, sketch: str, render: str, kinds: tuple[str, str]
) -> None:
    spec = DeployFile.from_yaml(ROOT / "deploy" / name)
    pair = spec.serving.model_pair(write_tiny=False)
    assert pair.family == family
    assert pair.sketch_path.endswith(sketch) and pair.render_path.endswith(render)
    for pool, kind in zip((spec.serving.sketch_pool, spec.serving.render_pool), kinds, strict=True):
        assert pool.ray_actor_options["accelerator_type"] == kind and pool.ray_actor_options["num_gpus"] == 1
        assert pool.queue_autoscaling is not None
    assert spec.logging_config == {"encoding": "JSON", "log_level": "INFO", "enable_access_log": True}


def _rayservice(path: Path) -> tuple[dict, list[dict]]:
    docs = list(yaml.safe_load_all(path.read_text()))
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    return service, [d for d in docs if d["kind"] != "RayService"]


def test_every_rayservice_is_checked_against_its_serve_config() -> None:
    assert sorted(m for m, _ in EMBEDDED) == sorted(p.name for p in KUBERAY.glob("rayservice-*.yaml"))


@pytest.mark.parametrize(("manifest", "config"), EMBEDDED, ids=[_pair_ids(p) for p in EMBEDDED])
def test_rayservice_embeds_its_serve_config(manifest: str, config: str, database_url: None) -> None:
    service, _ = _rayservice(KUBERAY / manifest)
    assert service["apiVersion"] == "ray.io/v1"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    _check_serve_config(embedded, f"{manifest}: serveConfigV2")
    assert embedded == yaml.safe_load((ROOT / "deploy" / config).read_text())
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize(("manifest", "config"), BY_ACCELERATOR, ids=[_pair_ids(p) for p in BY_ACCELERATOR])
def test_rayservice_worker_groups_provide_each_pools_gpu_kind(manifest: str, config: str) -> None:
    service, _ = _rayservice(KUBERAY / manifest)
    cluster = service["spec"]["rayClusterConfig"]
    # What the Ray autoscaler believes each group offers (its own parser of the group spec).
    offers = {g["groupName"]: _get_ray_resources_from_group_spec(g, False) for g in cluster["workerGroupSpecs"]}
    assert len(offers) == 2 and all(r.get("GPU") == 1 for r in offers.values())
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    for pool in ("sketch_pool", "render_pool"):
        wanted = args[pool]["ray_actor_options"]
        key = f"accelerator_type:{wanted['accelerator_type']}"
        groups = [name for name, res in offers.items() if res.get(key) == 1]
        assert len(groups) == 1, (pool, key, offers)
        group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == groups[0])
        selector = group["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
        assert wanted["accelerator_type"] in selector  # the pods land on that GPU model
        assert group["maxReplicas"] >= args[pool]["queue_autoscaling"]["max_replicas"]


@pytest.mark.parametrize(("manifest", "config"), EMBEDDED, ids=[_pair_ids(p) for p in EMBEDDED])
def test_rayservice_exposes_http_grpc_and_metrics(manifest: str, config: str) -> None:
    service, others = _rayservice(KUBERAY / manifest)
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert (ports["serve"], ports["grpc"], ports["metrics"]) == (8000, 9000, 8080)
    (api,) = [d for d in others if d["kind"] == "Service"]
    assert {p["name"]: p["port"] for p in api["spec"]["ports"]} == {"http": 8000, "grpc": 9000}
    cluster = service["spec"]["rayClusterConfig"]
    label = cluster["headGroupSpec"]["template"]["metadata"]["labels"]["srserve.io/service"]
    assert api["spec"]["selector"]["srserve.io/service"] == label == service["metadata"]["name"]
    for group in cluster["workerGroupSpecs"]:  # every pod of this service, and only its pods, behind the Service
        assert group["template"]["metadata"]["labels"]["srserve.io/service"] == label
    # The PodMonitor (every srserve pod, this port): tests/test_kuberay_manifests.py.


@pytest.mark.parametrize(("manifest", "config"), EMBEDDED, ids=[_pair_ids(p) for p in EMBEDDED])
def test_rayservice_pods_read_the_job_store_dsn_from_a_secret(manifest: str, config: str) -> None:
    """Every pod (head and each worker group) gets the DSN the Serve config names, from the Secret."""
    service, _ = _rayservice(KUBERAY / manifest)
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    variable = args["job_store"]["dsn_env"]
    example = yaml.safe_load_all((KUBERAY / "secrets-example.yaml").read_text())
    secrets = {d["metadata"]["name"]: d for d in example if d["kind"] == "Secret"}
    cluster = service["spec"]["rayClusterConfig"]
    specs = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in specs:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert args["artifacts"]["kind"] == "s3" and args["artifacts"]["bucket"]


@pytest.mark.parametrize(
    ("name", "family", "folder", "guidance_scale_2", "kind", "resources"),
    [
        ("wan2.2.yaml", "wan2.2", "Wan2.2-T2V-A14B-Diffusers", 3.0, "H100", ("wan22_high_noise", "wan22_low_noise")),
        (
            "wan2.2-i2v.yaml",
            "wan2.2-i2v",
            "Wan2.2-I2V-A14B-Diffusers",
            3.5,
            "H200",
            ("wan22_i2v_high_noise", "wan22_i2v_low_noise"),
        ),
    ],
)
def test_the_wan22_config_puts_each_expert_on_its_own_gpu(
    name: str, family: str, folder: str, guidance_scale_2: float, kind: str, resources: tuple[str, str]
) -> None:
    spec = DeployFile.from_yaml(ROOT / "deploy" / name)
    pair = spec.serving.model_pair(write_tiny=False)
    assert pair.family == family and pair.guidance_scale_2 == guidance_scale_2
    assert pair.sketch_path.endswith(folder)
    assert pair.render_path == pair.sketch_path + "/transformer_2"  # the low-noise expert, by its own path
    sketch, render = spec.serving.sketch_pool, spec.serving.render_pool
    for pool, resource in zip((sketch, render), resources, strict=True):
        options = pool.ray_actor_options
        assert (options["num_gpus"], options["accelerator_type"], options["resources"]) == (1, kind, {resource: 1})
        assert pool.queue_autoscaling is not None
    # The low-noise expert runs most steps (27 of 40 for T2V, 25 of 40 for I2V) and decodes.
    assert render.queue_autoscaling.max_replicas > sketch.queue_autoscaling.max_replicas


def test_the_expert_pools_of_the_two_wan22_models_ask_for_different_resources() -> None:
    """So text-to-video and image-to-video experts can share one Ray cluster without taking each other's GPUs."""
    asked = [
        set(getattr(DeployFile.from_yaml(ROOT / "deploy" / config).serving, pool).ray_actor_options["resources"])
        for _, config in BY_RESOURCE
        for pool in ("sketch_pool", "render_pool")
    ]
    assert len(set().union(*asked)) == len(asked)


@pytest.mark.parametrize(("manifest", "config"), BY_RESOURCE, ids=[_pair_ids(p) for p in BY_RESOURCE])
def test_rayservice_gives_each_expert_pool_its_group(manifest: str, config: str) -> None:
    service, _ = _rayservice(KUBERAY / manifest)
    cluster = service["spec"]["rayClusterConfig"]
    offers = {g["groupName"]: _get_ray_resources_from_group_spec(g, False) for g in cluster["workerGroupSpecs"]}
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    for pool in ("sketch_pool", "render_pool"):
        wanted = args[pool]["ray_actor_options"]
        needs = {"GPU": wanted["num_gpus"], f"accelerator_type:{wanted['accelerator_type']}": 1, **wanted["resources"]}
        groups = [name for name, res in offers.items() if all(res.get(k, 0) >= v for k, v in needs.items())]
        assert len(groups) == 1, (pool, needs, offers)  # one group per expert pool, one expert per GPU
        group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == groups[0])
        assert wanted["accelerator_type"] in group["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
        assert group["maxReplicas"] >= args[pool]["queue_autoscaling"]["max_replicas"]


@pytest.mark.parametrize(
    ("config", "profile", "render_kind"),
    [
        ("wan2.1-i2v.yaml", "profile_wan21_i2v_h200_derived.json", "L40S"),
        ("wan2.2-i2v.yaml", "profile_wan22_i2v_h200_derived.json", "H200"),
    ],
)
def test_the_i2v_step_prices_are_the_planner_profiles(config: str, profile: str, render_kind: str) -> None:
    """Each pool's step price before it measures one: its profile's step on the profile's kind, scaled by
    dense BF16 peak to the pool's kind where that differs (as the Wan2.1 profile scales its kinds)."""
    costs = Profile.read(ROOT / "benchmarks" / "results" / profile).kinds["H200"].shapes["832x480x81"]
    serving = DeployFile.from_yaml(ROOT / "deploy" / config).serving
    sketch, render = serving.sketch_pool, serving.render_pool
    assert sketch.ray_actor_options["accelerator_type"] == "H200"
    assert render.ray_actor_options["accelerator_type"] == render_kind
    scale = PEAK_BF16_TFLOPS["H200"] / PEAK_BF16_TFLOPS[render_kind]
    assert sketch.queue_autoscaling.default_step_s == round(costs.large_step_s)
    assert render.queue_autoscaling.default_step_s == round(costs.small_step_s * scale)
    defaults = serving.model_pair(write_tiny=False).defaults
    assert (defaults.width, defaults.height, defaults.num_frames) == (832, 480, 81)  # the profile's shape
    assert defaults.num_inference_steps == 40


@pytest.mark.parametrize("name", ["tiny-i2v.yaml", "wan2.1-i2v.yaml", "wan2.2-i2v.yaml"])
def test_the_i2v_configs_set_the_image_limits_and_pass_the_start_up_model_check(name: str) -> None:
    path = ROOT / "deploy" / name
    raw_ingress = yaml.safe_load(path.read_text())["applications"][0]["args"]["ingress"]
    assert {"max_image_bytes", "max_image_pixels"} <= set(raw_ingress)  # written out, not left to the defaults
    spec = DeployFile.from_yaml(path)
    pair = spec.serving.model_pair(write_tiny=False)
    assert pair.family.endswith("-i2v")
    if spec.serving.tiny:  # what `srserve serve` checks before Ray starts (the GPU folders are not here)
        check_model(spec.serving, path)


EDIT_LIMITS = {"max_video_bytes", "max_video_frames", "max_video_pixels", "max_reference_images"}


@pytest.mark.parametrize("name", ["tiny-vace.yaml", "wan2.1-vace.yaml"])
def test_the_vace_configs_set_the_editing_limits_and_pass_the_start_up_model_check(name: str) -> None:
    """Written out, not left to the defaults; an 81-frame 1280x720 video fits the GPU config's limits."""
    path = ROOT / "deploy" / name
    raw_ingress = yaml.safe_load(path.read_text())["applications"][0]["args"]["ingress"]
    assert EDIT_LIMITS | {"max_image_bytes", "max_image_pixels"} <= set(raw_ingress)
    spec = DeployFile.from_yaml(path)
    assert spec.serving.model_pair(write_tiny=False).family == "wan2.1-vace"
    ingress = spec.serving.ingress
    if spec.serving.tiny:  # what `srserve serve` checks before Ray starts (the GPU folders are not here)
        check_model(spec.serving, path)
    else:
        assert ingress.max_video_frames >= 81 and ingress.max_video_pixels >= 1280 * 720
    for pool in (spec.serving.sketch_pool, spec.serving.render_pool):  # VACE runs no step caches yet
        assert pool.cache.kind == "none"
