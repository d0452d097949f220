"""Start-up and config errors as a new user meets them: the real `srserve` entry point in a subprocess
ends with exit code 2 and one line on stderr naming the file, field or variable, never a traceback,
and before any Ray cluster starts (each case fails in the checks `srserve serve` runs before ray.init).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srserve(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"SRSERVE_HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "srserve.cli.main", *args],
        capture_output=True,
        text=True,
        env=base | (env or {}),
        cwd=ROOT,
        timeout=300,
    )


def refused(run: subprocess.CompletedProcess[str], *names: str) -> str:
    """The run ended as a start-up error should: exit 2, one `error:` line naming `names`, no traceback."""
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0], lines[0]
    assert "srserve is up" not in run.stdout
    return lines[0]


def serve_file(path: Path, args: str, *, http_port: int | None = None) -> Path:
    """A Serve config file running srserve with `args` (YAML flow mapping) on free ports."""
    path.write_text(
        f"http_options: {{host: 127.0.0.1, port: {http_port or _free_port()}}}\n"
        f"grpc_options: {{port: {_free_port()}}}\n"
        "applications:\n"
        "  - name: srserve\n"
        "    import_path: srserve.serving.app:app_builder\n"
        f"    args: {args}\n"
    )
    return path


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- the file ------------------------------------------------------------------------------------------
def test_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    refused(srserve("serve", str(missing), home=tmp_path), str(missing), "no such file")


def test_a_file_that_is_not_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nsketch_pool: [1, 2\n")
    refused(srserve("serve", str(bad), home=tmp_path), str(bad), "not valid YAML", "line 3")


def test_a_file_that_is_not_text(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    refused(srserve("serve", str(binary), home=tmp_path), str(binary), "not a text file")


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- model\n- tiny\n")
    refused(srserve("serve", str(listed), home=tmp_path), str(listed), "expected a mapping", "list")


def test_an_unknown_field(tmp_path: Path) -> None:
    typo = serve_file(tmp_path / "typo.yaml", "{model: tiny, sketch_pool: {num_replicaz: 2}}")
    line = refused(srserve("serve", str(typo), home=tmp_path), str(typo), "sketch_pool.num_replicaz", "unknown field")
    assert "applications[0].args.sketch_pool.num_replicaz" in line


def test_a_value_of_the_wrong_type(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nrender_pool: {max_backlog: lots}\n")
    refused(srserve("serve", str(bad), home=tmp_path), str(bad), "render_pool.max_backlog", "integer", "'lots'")


def test_a_model_that_is_neither_tiny_nor_a_pair(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tinny\n")
    line = refused(srserve("serve", str(bad), home=tmp_path), str(bad), "model: Input should be 'tiny'")
    assert "dictionary" not in line  # the other member of the union is not what the user meant


# -- the job store -------------------------------------------------------------------------------------
def test_the_dsn_variable_is_not_set(tmp_path: Path) -> None:
    """deploy/wan2.1.yaml reads its DSN from SRSERVE_DATABASE_URL (a Secret on a cluster)."""
    run = srserve("serve", "deploy/wan2.1.yaml", home=tmp_path)
    refused(run, "deploy/wan2.1.yaml", "job_store.dsn_env", "SRSERVE_DATABASE_URL", "not set", "export")


def test_the_dsn_is_no_dsn(tmp_path: Path) -> None:
    path = serve_file(tmp_path / "dsn.yaml", "{model: tiny, job_store: {dsn_env: SRSERVE_TEST_DSN}}")
    run = srserve("serve", str(path), home=tmp_path, env={"SRSERVE_TEST_DSN": "secret-ish words"})
    line = refused(run, str(path), "SRSERVE_TEST_DSN", "not a PostgreSQL DSN")
    assert "secret-ish" not in line


def test_the_dsn_server_does_not_answer(tmp_path: Path) -> None:
    """Nothing listens on the DSN's port: refused within the store's timeout, naming the server, not the DSN."""
    port = _free_port()
    path = serve_file(tmp_path / "dsn.yaml", "{model: tiny, job_store: {dsn_env: SRSERVE_TEST_DSN, timeout_s: 1}}")
    dsn = f"postgresql://srserve:hunter2@127.0.0.1:{port}/jobs"
    line = refused(srserve("serve", str(path), home=tmp_path, env={"SRSERVE_TEST_DSN": dsn}), f"127.0.0.1:{port}")
    assert "refused" in line.lower() and "SRSERVE_TEST_DSN" in line and "hunter2" not in line


def test_the_embedded_server_cannot_start(tmp_path: Path, listener: int) -> None:
    path = serve_file(tmp_path / "embedded.yaml", f"{{model: tiny, job_store: {{embedded_port: {listener}}}}}")
    line = refused(srserve("serve", str(path), home=tmp_path), str(path), "job_store", "embedded PostgreSQL")
    assert "Address already in use" in line


# -- the model -----------------------------------------------------------------------------------------
def test_a_model_folder_that_is_missing(tmp_path: Path) -> None:
    sketch, render = tmp_path / "no-sketch", tmp_path / "no-render"
    path = serve_file(tmp_path / "pair.yaml", f"{{model: {{sketch_path: {sketch}, render_path: {render}}}}}")
    refused(srserve("serve", str(path), home=tmp_path), str(path), "model", str(sketch), "does not exist")


# -- ports and the Ray cluster ---------------------------------------------------------------------------
def test_a_port_in_use(tmp_path: Path, listener: int) -> None:
    path = serve_file(tmp_path / "ports.yaml", "{model: tiny}", http_port=listener)
    run = srserve("serve", str(path), "--port-wait", "0", home=tmp_path)
    refused(run, str(path), "http_options.port", str(listener), "in use")


def test_a_ray_address_nothing_answers_at(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    refused(srserve("serve", "deploy/tiny.yaml", "--address", address, home=tmp_path), address, "ray start")


# -- the same path for every command, and --debug ------------------------------------------------------
@pytest.mark.parametrize("command", [("bench", "--deploy"), ("demo", "--config")], ids=lambda c: c[0])
def test_other_commands_that_read_a_deploy_file(tmp_path: Path, command: tuple[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nsketch_pool: {num_replicas: 0}\n")
    refused(srserve(*command, str(bad), home=tmp_path), str(bad), "sketch_pool.num_replicas")


def test_client_with_an_unreadable_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    refused(srserve("client", "--prompt", "a fox", "--tls-ca", str(ca), home=tmp_path), "--tls-ca", str(ca))


def test_debug_shows_the_traceback_too(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    for args in (("serve", str(missing), "--debug"), ("--debug", "serve", str(missing))):
        run = srserve(*args, home=tmp_path)
        assert run.returncode == 2 and "Traceback" in run.stderr and "ConfigError" in run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith(f"error: {missing}: no such file")
