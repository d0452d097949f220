"""The KubeRay manifests under deploy/kuberay/ as a cluster reads them, without a cluster: each RayService
against KubeRay's own RayService CRD schema and admission rules, each worker group's
`rayStartParams.resources` through every reader of it (KubeRay's parser, the pod's bash, `ray start`,
Ray's autoscaler), and the PodMonitor against its CRD and the pods it has to select.

The CRDs are vendored verbatim (gzipped) in tests/data/kuberay/ (provenance in its README.md). The
KubeRay behaviour ported here is that of ray-operator v1.3.2 to v1.7.0 (the same code in both where it
matters); each port names its Go function."""

from __future__ import annotations

import copy
import gzip
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from decimal import ROUND_CEILING, Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema import Draft4Validator, ValidationError
from ray._private.utils import parse_resources_json
from ray.autoscaler._private.cli_logger import cf, cli_logger
from ray.autoscaler._private.kuberay.autoscaling_config import _get_ray_resources_from_group_spec

from srserve.serving.config import APP_IMPORT_PATH, ServingConfig, rank_bundles

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"
DATA = Path(__file__).resolve().parent / "data" / "kuberay"
RAYSERVICE_CRDS = sorted(DATA.glob("ray.io_rayservices-*.yaml.gz"))
PODMONITOR_CRD = DATA / "monitoring.coreos.com_podmonitors-v0.93.0.yaml.gz"
PODMONITOR = KUBERAY / "podmonitor.yaml"


def _documents(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) of every `kind` object in deploy/kuberay/."""
    return [
        (path.name, doc)
        for path in sorted(KUBERAY.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == kind
    ]


RAYSERVICES = _documents("RayService")


def _cluster(service: dict[str, Any]) -> dict[str, Any]:
    return service["spec"]["rayClusterConfig"]


def _groups(service: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(node type, group name, group spec) of the head and each worker group."""
    cluster = _cluster(service)
    yield "head", "headgroup", cluster["headGroupSpec"]
    for group in cluster.get("workerGroupSpecs") or []:
        yield "worker", group["groupName"], group


# --- Kubernetes: a CRD's structural schema, validated as the API server does ---------------------------------------

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _k8s_type(validator: Any, types: Any, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if instance is None and schema.get("nullable"):
        return
    yield from Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


def _k8s_properties(
    validator: Any, properties: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """Known fields validated; unknown ones refused (kubectl's default strict field validation), unless
    the schema keeps unknown fields or types them through additionalProperties."""
    yield from Draft4Validator.VALIDATORS["properties"](validator, properties, instance, schema)
    if not validator.is_type(instance, "object"):
        return
    if "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    for name in sorted(set(instance) - set(properties)):
        yield ValidationError(f"unknown field {name!r}")


def _int_or_string(validator: Any, enabled: bool, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not enabled or (instance is None and schema.get("nullable")):
        return
    if not isinstance(instance, str) and (not isinstance(instance, int) or isinstance(instance, bool)):
        yield ValidationError(f"{instance!r} is neither an integer nor a string")


def _list_type(validator: Any, kind: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    """`set`: no two equal items; `map`: no two items with the same key fields (a key's default applies)."""
    if not validator.is_type(instance, "array"):
        return
    if kind == "set":
        encoded = [json.dumps(item, sort_keys=True) for item in instance]
        for item in sorted({e for e in encoded if encoded.count(e) > 1}):
            yield ValidationError(f"duplicate item {item} in a list-type=set")
    elif kind == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        key_schemas = (schema.get("items") or {}).get("properties", {})
        seen: set[str] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            values = {k: item.get(k, key_schemas.get(k, {}).get("default")) for k in keys}
            key = json.dumps(values, sort_keys=True)
            if key in seen:
                yield ValidationError(f"duplicate entries for key {values}")
            seen.add(key)


def _int_format(validator: Any, fmt: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    """The Go field's width (KubeRay decodes into int32/int64 fields)."""
    if fmt in _INT_RANGES and validator.is_type(instance, "integer"):
        low, high = _INT_RANGES[fmt]
        if not low <= instance <= high:
            yield ValidationError(f"{instance} does not fit {fmt}")


def _cel_rules(validator: Any, rules: list[dict[str, Any]], instance: Any, schema: dict) -> Iterator[ValidationError]:
    """CEL rules are not evaluated here: a manifest that sets such a field needs its rule checked by hand."""
    yield ValidationError(f"field under CEL rules this test does not evaluate: {[r['rule'] for r in rules]}")


K8sValidator = jsonschema.validators.extend(
    Draft4Validator,  # OpenAPI v3.0 schemas are draft-4 JSON Schema plus the keywords below
    {
        "type": _k8s_type,
        "properties": _k8s_properties,
        "x-kubernetes-int-or-string": _int_or_string,
        "x-kubernetes-list-type": _list_type,
        "format": _int_format,
        "x-kubernetes-validations": _cel_rules,
    },
)


@cache
def _crd(path: Path) -> dict[str, Any]:
    return yaml.safe_load(gzip.decompress(path.read_bytes()))


def _crd_schema(path: Path, api_version: str, kind: str) -> dict[str, Any]:
    crd = _crd(path)
    group, version = api_version.split("/")
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind), path.name
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert entry["served"], f"{path.name}: {api_version} is not served"
    return entry["schema"]["openAPIV3Schema"]


def schema_errors(obj: dict[str, Any], crd: Path) -> list[str]:
    schema = _crd_schema(crd, obj["apiVersion"], obj["kind"])
    errors = K8sValidator(schema).iter_errors(obj)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


# k8s.io/apimachinery/pkg/util/validation: the name and label rules the API server applies.
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def label_errors(labels: dict[str, Any], where: str) -> list[str]:
    """IsQualifiedName for keys, IsValidLabelValue for values."""
    errors = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if prefix and not (len(prefix) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(prefix)):
            errors.append(f"{where}: label key {key!r}: bad prefix")
        if not (len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name)):
            errors.append(f"{where}: label key {key!r}: bad name")
        if not isinstance(value, str) or not (value == "" or (len(value) <= 63 and _QUALIFIED_NAME.fullmatch(value))):
            errors.append(f"{where}: label {key!r}: bad value {value!r}")
    return errors


def object_meta_errors(obj: dict[str, Any]) -> list[str]:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    errors = [] if len(name) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(name) else [f"metadata.name {name!r}"]
    return errors + label_errors(meta.get("labels") or {}, "metadata.labels")


# --- KubeRay: admission rules, pod labels, the `ray start` command it builds ----------------------------------------

MAX_RAY_SERVICE_NAME_LENGTH = 53 - 6  # utils.MaxRayServiceNameLength: the RayCluster name gets a suffix
UPGRADE_TYPES = {"NewClusterWithIncrementalUpgrade", "NewCluster", "None"}


def _env_names(group: dict[str, Any]) -> set[str]:
    return {e["name"] for e in group["template"]["spec"]["containers"][0].get("env") or []}


def kuberay_admission_errors(service: dict[str, Any]) -> list[str]:
    """What KubeRay refuses (v1.7.0 the superset of v1.3.2): ValidateRayServiceMetadata, ValidateRayServiceSpec
    with ValidateRayClusterSpec (ray-operator/controllers/ray/utils/validation.go) and the RayCluster webhook's
    validateWorkerGroups (ray-operator/pkg/webhooks/v1/raycluster_webhook.go), for the fields these use."""
    errors = []
    name = service["metadata"]["name"]
    if len(name) > MAX_RAY_SERVICE_NAME_LENGTH:
        errors.append(f"name {name!r} longer than {MAX_RAY_SERVICE_NAME_LENGTH}")
    if not (len(name) <= 63 and _DNS1035_LABEL.fullmatch(name)):
        errors.append(f"name {name!r} is not a DNS-1035 label")
    spec = service["spec"]
    if (spec.get("upgradeStrategy") or {}).get("type", "NewCluster") not in UPGRADE_TYPES:
        errors.append(f"upgradeStrategy.type {spec['upgradeStrategy']['type']!r}")
    if (spec.get("rayClusterDeletionDelaySeconds") or 0) < 0:
        errors.append("rayClusterDeletionDelaySeconds < 0")
    cluster = _cluster(service)
    head = cluster["headGroupSpec"]
    if ((head.get("headService") or {}).get("metadata") or {}).get("name"):
        errors.append("headGroupSpec.headService.metadata.name must not be set")
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    options = cluster.get("autoscalerOptions") or {}
    v2 = options.get("version") == "v2" or "RAY_enable_autoscaler_v2" in _env_names(head)
    if (options.get("idleTimeoutSeconds") or 0) < 0:
        errors.append("autoscalerOptions.idleTimeoutSeconds < 0")
    if "RAY_REDIS_ADDRESS" in _env_names(head) and not cluster.get("gcsFaultToleranceOptions"):
        errors.append("RAY_REDIS_ADDRESS without gcsFaultToleranceOptions")
    if (head.get("rayStartParams") or {}).get("redis-username") or "REDIS_USERNAME" in _env_names(head):
        errors.append("redis username outside gcsFaultToleranceOptions")
    seen: set[str] = set()
    for node_type, group_name, group in _groups(service):
        where = f"{node_type} group {group_name}"
        params = group.get("rayStartParams") or {}
        if not group["template"]["spec"].get("containers"):
            errors.append(f"{where}: no container")
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
            errors.append(f"{where}: resources in both rayStartParams and the group's resources")
        if "labels" in params:
            errors.append(f"{where}: rayStartParams['labels'] (use the group's labels)")
        errors += label_errors(group.get("labels") or {}, f"{where} labels")
        if node_type == "head":
            continue
        if group_name in seen:
            errors.append(f"worker group names must be unique: {group_name!r}")
        seen.add(group_name)
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            errors.append(f"{where}: minReplicas and maxReplicas are required without autoscaling")
        if (low is not None and low < 0) or (high is not None and high < 0):
            errors.append(f"{where}: negative min/maxReplicas")
        if low is not None and high is not None and low > high:
            errors.append(f"{where}: minReplicas > maxReplicas")
        if (group.get("idleTimeoutSeconds") or 0) < 0 or (group.get("idleTimeoutSeconds") is not None and not v2):
            errors.append(f"{where}: idleTimeoutSeconds needs autoscaler v2 and a non-negative value")
        if group.get("suspend") and autoscaling:
            errors.append(f"{where}: suspended with the autoscaler on")
    return errors


def kuberay_pod_labels(node_type: str, cluster_name: str, group_name: str, template: dict[str, Any]) -> dict[str, str]:
    """labelPod (common/pod.go): KubeRay's labels, then the template's, except the three it keeps."""
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster_name,
        "ray.io/node-type": node_type,
        "ray.io/group": group_name,
        "ray.io/identifier": f"{cluster_name}-{node_type}"[-63:],
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    for key, value in ((template.get("metadata") or {}).get("labels") or {}).items():
        if key not in ("ray.io/node-type", "ray.io/group", "ray.io/cluster"):
            labels[key] = value
    return labels


class ResourcesParseError(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise ResourcesParseError(f"{name} is not JSON")  # Go's encoding/json has no NaN or Infinity


def kuberay_resources_map(ray_start_params: dict[str, str]) -> dict[str, float]:
    """getResourcesMap (common/pod.go, v1.3.0 on): surrounding quotes, backticks and spaces trimmed
    (strings.Trim(s, "'\\"` ")), then json.Unmarshal into a map[string]float64."""
    if "resources" not in ray_start_params:
        return {}
    text = ray_start_params["resources"].strip("'\"` ")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ResourcesParseError(f"failed to unmarshal resources {text!r}: {exc}") from exc
    if value is None:  # JSON null leaves Go's map nil, without an error
        return {}
    if not isinstance(value, dict):
        raise ResourcesParseError(f"resources {text!r} is not a JSON object")
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ResourcesParseError(f"resources {text!r}: {key!r} is not a number")
    return {key: float(number) for key, number in value.items()}


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": "1e-9", "u": "1e-6", "m": "1e-3", "": "1", "k": "1e3", "M": "1e6", "G": "1e9", "T": "1e12"}
_DECIMAL |= {"P": "1e15", "E": "1e18"}


def quantity_value(quantity: str | int) -> int:
    """resource.Quantity's Value(): the quantity rounded up to an integer."""
    match = re.fullmatch(r"([+-]?(?:\d+\.?\d*|\.\d+))([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE]?)", str(quantity))
    assert match, f"not a Kubernetes quantity: {quantity!r}"
    number, suffix = Decimal(match[1]), match[2]
    if suffix[:1] in ("e", "E"):
        scaled = number * Decimal(10) ** int(suffix[1:])
    else:
        scaled = number * Decimal(_BINARY.get(suffix) or _DECIMAL[suffix])
    return int(scaled.to_integral_value(rounding=ROUND_CEILING))


def _is_gpu_resource(name: str) -> bool:
    """utils.IsGPUResourceKey."""
    return name.endswith("gpu") or re.search(r"nvidia\.com/mig-\d+g\.\d+gb$", name) is not None


def kuberay_ray_start_params(group: dict[str, Any], log: list[str]) -> dict[str, str]:
    """generateRayStartCommand's additions to rayStartParams: num-cpus and memory from the Ray container's
    limits, then addWellKnownAcceleratorResources, which parses `resources` first and, when that fails,
    logs "failed to add accelerator resources to rayStartParams" and adds nothing (no num-gpus)."""
    params = dict(group.get("rayStartParams") or {})
    container_resources = group["template"]["spec"]["containers"][0].get("resources") or {}
    limits, requests = container_resources.get("limits") or {}, container_resources.get("requests") or {}
    if "num-cpus" not in params:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu and quantity_value(cpu):
            params["num-cpus"] = str(quantity_value(cpu))
    if "memory" not in params and limits.get("memory") and quantity_value(limits["memory"]):
        params["memory"] = str(quantity_value(limits["memory"]))
    if not limits:
        return params
    assert not {"google.com/tpu", "aws.amazon.com/neuroncore"} & set(limits), "custom accelerators: not ported"
    try:
        kuberay_resources_map(params)
    except ResourcesParseError as exc:
        log.append(f"failed to add accelerator resources to rayStartParams: {exc}")
        return params
    for name in sorted(limits):
        if "num-gpus" not in params and _is_gpu_resource(name) and quantity_value(limits[name]):
            params["num-gpus"] = str(quantity_value(limits[name]))
    return params


def kuberay_flags(params: dict[str, str]) -> str:
    """convertParamMap: ` --key=value ` per sorted key; "true" becomes a bare flag and "false" is dropped,
    except for the two options that take true/false as a value."""
    flags = []
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false") and key not in ("log-color", "include-dashboard"):
            flags.append(f" --{key} " if value.lower() == "true" else "")
        else:
            flags.append(f" --{key}={value} ")
    return "".join(flags)


def bash_words(flags: str) -> list[str]:
    """The arguments `ray start` gets: KubeRay runs `ulimit -n 65536; ray start <flags>` with bash -lc;
    printf, a bash builtin, stands in for `ray start` and prints each word it receives."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {flags}"], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


def ray_node_resources(group: dict[str, Any], log: list[str]) -> dict[str, float]:
    """The Ray node's resources as `ray start` reads its arguments (its own --resources parser); without
    --num-gpus Ray detects the GPUs the device plugin gives the container (its nvidia.com/gpu limit)."""
    words = bash_words(kuberay_flags(kuberay_ray_start_params(group, log)))
    options = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
    node = {k: float(v) for k, v in parse_resources_json(options.get("resources", "{}"), cli_logger, cf).items()}
    limits = (group["template"]["spec"]["containers"][0].get("resources") or {}).get("limits") or {}
    gpus = options.get("num-gpus") or limits.get("nvidia.com/gpu")
    if gpus:
        node["GPU"] = float(int(gpus))
    if "num-cpus" in options:
        node["CPU"] = float(int(options["num-cpus"]))
    return node


# --- srserve: what each pool's replica asks Ray for --------------------------------------------------------------


def pool_demands(service: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per active pool: one replica's resources on one node (a parallel replica's bundles are STRICT_PACK)."""
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = [a for a in serve_config["applications"] if a["import_path"] == APP_IMPORT_PATH]
    serving = ServingConfig.model_validate({"app_name": app.get("name", "srserve"), **app["args"]})
    if serving.layout == "colocated":
        names = ["colocated_pool"]
    else:
        names = ["sketch_pool", "render_pool"] + (["text_pool"] if serving.text_encoder_placement == "pool" else [])
    demands = {}
    for name in names:
        options = getattr(serving, name).deployment_options()
        bundles = options.get("placement_group_bundles") or rank_bundles(options["ray_actor_options"], 1)
        demand: dict[str, float] = {}
        for bundle in bundles:
            for key, amount in bundle.items():
                demand[key] = demand.get(key, 0.0) + amount
        demands[name] = demand
    return demands


def _covers(offer: dict[str, float], demand: dict[str, float]) -> bool:
    return all(offer.get(key, 0.0) >= amount for key, amount in demand.items())


# --- the tests ------------------------------------------------------------------------------------------------------

SERVICE_IDS = [name for name, _ in RAYSERVICES]


def test_every_rayservice_manifest_is_found() -> None:
    """One RayService per rayservice-*.yaml (the image-to-video ones included), two KubeRay versions' CRDs."""
    assert sorted(SERVICE_IDS) == sorted(p.name for p in KUBERAY.glob("rayservice-*.yaml"))
    assert {"rayservice-wan2.1-i2v.yaml", "rayservice-wan2.2-i2v.yaml"} <= set(SERVICE_IDS)
    assert len(RAYSERVICE_CRDS) >= 2


@pytest.mark.parametrize("crd", RAYSERVICE_CRDS, ids=lambda p: p.name.removesuffix(".yaml.gz"))
@pytest.mark.parametrize(("name", "service"), RAYSERVICES, ids=SERVICE_IDS)
def test_rayservice_matches_kuberays_crd(name: str, service: dict[str, Any], crd: Path) -> None:
    assert schema_errors(service, crd) + object_meta_errors(service) == []


@pytest.mark.parametrize(("name", "service"), RAYSERVICES, ids=SERVICE_IDS)
def test_rayservice_passes_kuberays_admission_rules(name: str, service: dict[str, Any]) -> None:
    pod_labels = [
        error
        for _, n, g in _groups(service)
        for error in label_errors((g["template"].get("metadata") or {}).get("labels") or {}, f"{n} pod labels")
    ]
    assert kuberay_admission_errors(service) + pod_labels == []


@pytest.mark.parametrize(("name", "service"), RAYSERVICES, ids=SERVICE_IDS)
def test_kuberay_parses_every_groups_resources_and_adds_its_gpus(name: str, service: dict[str, Any]) -> None:
    """The old escaped form ('"{\\"a\\": 1}"') fails here: trimmed, it is `{\\"a\\": 1}`, not JSON."""
    for _, group_name, group in _groups(service):
        log: list[str] = []
        params = kuberay_ray_start_params(group, log)
        assert log == [], (group_name, log)
        resources = kuberay_resources_map(params)
        limits = group["template"]["spec"]["containers"][0]["resources"].get("limits") or {}
        if limits.get("nvidia.com/gpu"):
            assert params["num-gpus"] == str(quantity_value(limits["nvidia.com/gpu"])), group_name
        # The node `ray start` builds has the same custom resources KubeRay read.
        node = ray_node_resources(group, [])
        assert {k: v for k, v in node.items() if k not in ("CPU", "GPU")} == resources, group_name


@pytest.mark.parametrize(("name", "service"), RAYSERVICES, ids=SERVICE_IDS)
def test_each_pool_has_a_worker_group_whose_nodes_and_autoscaler_offer_its_resources(
    name: str, service: dict[str, Any]
) -> None:
    workers = [(n, g) for t, n, g in _groups(service) if t == "worker"]
    nodes = {n: ray_node_resources(g, []) for n, g in workers}
    autoscaler = {n: _get_ray_resources_from_group_spec(g, False) for n, g in workers}  # Ray's own parser
    for pool, demand in pool_demands(service).items():
        by_node = sorted(n for n in nodes if _covers(nodes[n], demand))
        by_autoscaler = sorted(n for n in autoscaler if _covers(autoscaler[n], demand))
        assert by_node, (pool, demand, nodes)
        assert by_node == by_autoscaler, (pool, demand, nodes, autoscaler)  # it scales up the groups that fit


def test_podmonitor_matches_its_crd() -> None:
    monitor = yaml.safe_load(PODMONITOR.read_text())
    assert schema_errors(monitor, PODMONITOR_CRD) + object_meta_errors(monitor) == []


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """metav1.LabelSelector: every matchLabels pair and every matchExpressions requirement holds."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    tests: dict[str, Callable[[str, list[str]], bool]] = {
        "In": lambda key, values: key in labels and labels[key] in values,
        "NotIn": lambda key, values: key not in labels or labels[key] not in values,
        "Exists": lambda key, values: key in labels,
        "DoesNotExist": lambda key, values: key not in labels,
    }
    return all(tests[e["operator"]](e["key"], e.get("values") or []) for e in selector.get("matchExpressions") or [])


@pytest.mark.parametrize(("name", "service"), RAYSERVICES, ids=SERVICE_IDS)
def test_podmonitor_scrapes_every_pod_of_every_rayservice(name: str, service: dict[str, Any]) -> None:
    monitor = yaml.safe_load(PODMONITOR.read_text())
    namespace = monitor["metadata"].get("namespace")
    assert "namespaceSelector" in monitor["spec"] or service["metadata"].get("namespace") == namespace
    cluster_name = f"{service['metadata']['name']}-x7k2p"  # the RayService's RayCluster: its name and a suffix
    ports = [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
    for node_type, group_name, group in _groups(service):
        labels = kuberay_pod_labels(node_type, cluster_name, group_name, group["template"])
        assert selects(monitor["spec"]["selector"], labels), (group_name, labels)
        assert set(monitor["spec"].get("podTargetLabels") or []) <= set(labels), group_name
        declared = {p.get("name"): p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        params = kuberay_ray_start_params(group, [])
        for port in ports:  # KubeRay defaults metrics-export-port to 8080 (setMissingRayStartParams)
            assert declared.get(port) == int(params.get("metrics-export-port", "8080")), (group_name, port)


# --- the checks themselves catch what the cluster would refuse --------------------------------------------------------


def _wan21() -> dict[str, Any]:
    (service,) = [s for n, s in RAYSERVICES if n == "rayservice-wan2.1.yaml"]
    return copy.deepcopy(service)


def _typo(s: dict[str, Any]) -> None:
    _cluster(s)["workerGroupSpecs"][0]["replica"] = 1


def _string_replicas(s: dict[str, Any]) -> None:
    _cluster(s)["workerGroupSpecs"][0]["replicas"] = "1"


def _cpu_list(s: dict[str, Any]) -> None:
    _cluster(s)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = ["8"]


def _bad_quantity(s: dict[str, Any]) -> None:
    _cluster(s)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "32 GiB"


def _duplicate_port(s: dict[str, Any]) -> None:
    ports = _cluster(s)["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    ports.append({"containerPort": 8080, "name": "metrics2"})


def _int_start_param(s: dict[str, Any]) -> None:
    _cluster(s)["headGroupSpec"]["rayStartParams"]["num-cpus"] = 8


@pytest.mark.parametrize(
    "break_it", [_typo, _string_replicas, _cpu_list, _bad_quantity, _duplicate_port, _int_start_param]
)
def test_the_schema_check_refuses_what_the_api_server_refuses(break_it: Callable[[dict[str, Any]], None]) -> None:
    service = _wan21()
    assert schema_errors(service, RAYSERVICE_CRDS[0]) == []
    break_it(service)
    assert schema_errors(service, RAYSERVICE_CRDS[0]) != []


def test_the_schema_check_takes_integers_for_int_or_string_quantities() -> None:
    service = _wan21()
    _cluster(service)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 8
    assert schema_errors(service, RAYSERVICE_CRDS[0]) == []


def test_the_admission_check_refuses_duplicate_groups_and_long_names() -> None:
    service = _wan21()
    workers = _cluster(service)["workerGroupSpecs"]
    workers[1]["groupName"] = workers[0]["groupName"]
    service["metadata"]["name"] = "srserve-" + "x" * 40
    errors = kuberay_admission_errors(service)
    assert any("unique" in e for e in errors) and any("longer than" in e for e in errors)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ('\'{"a": 1, "b": 2}\'', {"a": 1.0, "b": 2.0}),  # the form KubeRay itself writes back
        ('{"a": 1}', {"a": 1.0}),
        ('"{\\"a\\": 1}"', None),  # escaped: left as {\"a\": 1} after the trim
        ('\'{"a": "1"}\'', None),  # a string is not a float64
    ],
)
def test_kuberays_resources_parser(value: str, parsed: dict[str, float] | None) -> None:
    if parsed is None:
        with pytest.raises(ResourcesParseError):
            kuberay_resources_map({"resources": value})
    else:
        assert kuberay_resources_map({"resources": value}) == parsed
