"""Every deploy file is valid for the tool that reads it: Serve configs against Ray Serve's own schema
(with import paths that resolve and args that are a valid ServingConfig), the KubeRay RayService
(its serveConfigV2 is the same Serve config, its worker groups give each pool its GPU kind), and
the Grafana dashboard (every srserve metric it plots exists)."""

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

from srserve.serving.app import app_builder
from srserve.serving.config import APP_IMPORT_PATH, GRPC_SERVICER_FUNCTIONS, DeployFile
from srserve.serving.ops.metrics import _metrics

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIGS = sorted((ROOT / "deploy").glob("*.yaml"))
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice-wan2.1.yaml"
RAYSERVICE_WAN22 = ROOT / "deploy" / "kuberay" / "rayservice-wan2.2.yaml"
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


def test_the_wan_config_puts_each_pool_on_its_gpu_kind() -> None:
    spec = DeployFile.from_yaml(ROOT / "deploy" / "wan2.1.yaml")
    pair = spec.serving.model_pair(write_tiny=False)
    assert pair.sketch_path.endswith("Wan2.1-T2V-14B-Diffusers")
    assert pair.render_path.endswith("Wan2.1-T2V-1.3B-Diffusers")
    sketch, render = spec.serving.sketch_pool, spec.serving.render_pool
    assert sketch.ray_actor_options["accelerator_type"] == "H100" and sketch.ray_actor_options["num_gpus"] == 1
    assert render.ray_actor_options["accelerator_type"] == "L40S" and render.ray_actor_options["num_gpus"] == 1
    assert sketch.queue_autoscaling is not None and render.queue_autoscaling is not None
    assert spec.logging_config == {"encoding": "JSON", "log_level": "INFO", "enable_access_log": True}


def _rayservice(path: Path = RAYSERVICE) -> tuple[dict, list[dict]]:
    docs = list(yaml.safe_load_all(path.read_text()))
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    return service, [d for d in docs if d["kind"] != "RayService"]


def test_rayservice_embeds_the_wan_serve_config(database_url: None) -> None:
    service, _ = _rayservice()
    assert service["apiVersion"] == "ray.io/v1"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    _check_serve_config(embedded, "serveConfigV2")
    assert embedded == yaml.safe_load((ROOT / "deploy" / "wan2.1.yaml").read_text())
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"


def test_rayservice_worker_groups_provide_each_pools_gpu_kind() -> None:
    service, _ = _rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
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


def test_rayservice_exposes_http_grpc_and_metrics() -> None:
    service, others = _rayservice()
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert (ports["serve"], ports["grpc"], ports["metrics"]) == (8000, 9000, 8080)
    (api,) = [d for d in others if d["kind"] == "Service"]
    assert {p["name"]: p["port"] for p in api["spec"]["ports"]} == {"http": 8000, "grpc": 9000}
    labels = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["srserve.io/service"] == labels["srserve.io/service"]
    # The PodMonitor (every srserve pod, this port): tests/test_kuberay_manifests.py.


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


def test_rayservice_pods_read_the_job_store_dsn_from_a_secret() -> None:
    """Every pod (head and each worker group) gets the DSN the Serve config names, from the Secret."""
    service, _ = _rayservice()
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    variable = args["job_store"]["dsn_env"]
    example = yaml.safe_load_all((ROOT / "deploy" / "kuberay" / "secrets-example.yaml").read_text())
    secrets = {d["metadata"]["name"]: d for d in example if d["kind"] == "Secret"}
    cluster = service["spec"]["rayClusterConfig"]
    specs = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in specs:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert args["artifacts"]["kind"] == "s3" and args["artifacts"]["bucket"]


def test_the_wan22_config_puts_each_expert_on_its_own_gpu() -> None:
    spec = DeployFile.from_yaml(ROOT / "deploy" / "wan2.2.yaml")
    pair = spec.serving.model_pair(write_tiny=False)
    assert pair.family == "wan2.2" and pair.guidance_scale_2 == 3.0
    assert pair.sketch_path.endswith("Wan2.2-T2V-A14B-Diffusers")
    assert pair.render_path == pair.sketch_path + "/transformer_2"  # the low-noise expert, by its own path
    sketch, render = spec.serving.sketch_pool, spec.serving.render_pool
    for pool, resource in ((sketch, "wan22_high_noise"), (render, "wan22_low_noise")):
        options = pool.ray_actor_options
        assert (options["num_gpus"], options["accelerator_type"], options["resources"]) == (1, "H100", {resource: 1})
        assert pool.queue_autoscaling is not None
    assert render.queue_autoscaling.max_replicas > sketch.queue_autoscaling.max_replicas  # 27 of 40 steps


def test_rayservice_wan22_embeds_its_serve_config_and_gives_each_expert_pool_its_group(database_url: None) -> None:
    service, others = _rayservice(RAYSERVICE_WAN22)
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    _check_serve_config(embedded, "serveConfigV2")
    assert embedded == yaml.safe_load((ROOT / "deploy" / "wan2.2.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"] is True
    offers = {g["groupName"]: _get_ray_resources_from_group_spec(g, False) for g in cluster["workerGroupSpecs"]}
    args = embedded["applications"][0]["args"]
    for pool in ("sketch_pool", "render_pool"):
        wanted = args[pool]["ray_actor_options"]
        needs = {"GPU": wanted["num_gpus"], f"accelerator_type:{wanted['accelerator_type']}": 1, **wanted["resources"]}
        groups = [name for name, res in offers.items() if all(res.get(k, 0) >= v for k, v in needs.items())]
        assert len(groups) == 1, (pool, needs, offers)  # one group per expert pool, one expert per GPU
        group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == groups[0])
        assert wanted["accelerator_type"] in group["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
        assert group["maxReplicas"] >= args[pool]["queue_autoscaling"]["max_replicas"]
    labels = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    (api,) = [d for d in others if d["kind"] == "Service"]
    assert api["spec"]["selector"]["srserve.io/service"] == labels["srserve.io/service"] == "srserve-wan22"
    example = yaml.safe_load_all((ROOT / "deploy" / "kuberay" / "secrets-example.yaml").read_text())
    secrets = {d["metadata"]["name"]: d for d in example if d["kind"] == "Secret"}
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        ref = {e["name"]: e for e in container["env"]}[args["job_store"]["dsn_env"]]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
