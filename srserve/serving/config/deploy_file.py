"""The deploy file: a Ray Serve config whose application runs srserve (or a bare srserve config), read
from YAML with every problem reported as one ConfigError naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from srserve.serving.config.errors import ConfigError, describe_invalid
from srserve.serving.config.serving import ServingConfig

APP_IMPORT_PATH = "srserve.serving.app:app_builder"
# Serve's gRPC proxy registers these; named as strings so a config can be written without importing them.
GRPC_SERVICER_FUNCTIONS = [
    "srserve.serving.api.grpc_servicers.add_VideoGenerationServicer_to_server",
    "srserve.serving.api.grpc_servicers.add_HealthServicer_to_server",
]
# DeployFile's fields as a Serve config file spells them.
_SERVE_KEYS = {"http_host": "http_options.host", "http_port": "http_options.port", "grpc_port": "grpc_options.port"}


class DeployFile(BaseModel):
    """A Ray Serve config file whose application runs srserve: the same file works with
    `serve run FILE` and `srserve serve FILE`."""

    model_config = ConfigDict(extra="allow")

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 9000
    route_prefix: str = "/"
    # Serve's logging_config (the application's, else the file's): e.g. {encoding: JSON}.
    logging_config: dict[str, Any] | None = None
    serving: ServingConfig

    @classmethod
    def from_yaml(cls, path: str | Path) -> DeployFile:
        """Read and check `path`; any problem is a ConfigError naming the file and the field."""
        data = read_mapping(path)
        if "applications" not in data:  # a bare srserve config
            return cls(serving=_validate_serving(data, path, ""))
        apps = data["applications"]
        if not isinstance(apps, list):
            raise ConfigError(f"{path}: applications: expected a list of Serve applications")
        ours = [(i, a) for i, a in enumerate(apps) if isinstance(a, dict) and a.get("import_path") == APP_IMPORT_PATH]
        if len(ours) != 1:
            raise ConfigError(
                f"{path}: applications: expected exactly one application with import_path {APP_IMPORT_PATH}, "
                f"found {len(ours)}"
            )
        index, app = ours[0]
        args = app.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{path}: applications[{index}].args: expected a mapping of srserve settings")
        named = {"app_name": app.get("name", "srserve"), **args}
        serving = _validate_serving(named, path, f"applications[{index}].args.")
        http, grpc = (_section(data, key, path) for key in ("http_options", "grpc_options"))
        try:
            return cls(
                http_host=http.get("host", "127.0.0.1"),
                http_port=http.get("port", 8000),
                grpc_port=grpc.get("port", 9000),
                route_prefix=app.get("route_prefix", "/"),
                logging_config=app.get("logging_config") or data.get("logging_config"),
                serving=serving,
            )
        except ValidationError as exc:
            raise ConfigError(f"{path}: {describe_invalid(exc, rename=_SERVE_KEYS)}") from None


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in `path` (an empty file is an empty mapping)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; give the path of a deploy file such as deploy/tiny.yaml") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give the path of a deploy file such as deploy/tiny.yaml") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); a deploy file is YAML") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({where}{problem}); fix the syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of srserve settings (or a Serve config with `applications:`), "
            f"got a YAML {type(data).__name__}"
        )
    return data


def _section(data: dict[str, Any], key: str, path: str | Path) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: expected a mapping")
    return value


def _validate_serving(data: dict[str, Any], path: str | Path, prefix: str) -> ServingConfig:
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_invalid(exc, prefix)}") from None
