"""The HTTP API against its own /openapi.json: `schemathesis run` with every check, on the tiny deployment.

Generated requests that create jobs are real jobs of the tiny model, so the hooks below (loaded by
the schemathesis process through SCHEMATHESIS_HOOKS) keep them cheap: a create body that the
server will accept is shrunk to at most the tiny defaults' size (64x64 pixels, 17 frames; still
a valid body), and every job a call creates is cancelled right after the call. The schema itself
is the server's, unchanged. What no JSON Schema can state is given to schemathesis as data, not as
allowed failures: the handoff body is srserve's binary wire format, so its valid bodies are real
handoffs of the tiny pair (a media-type strategy, as schemathesis does for formats like PDF), and
downloads ask for a video that exists, so every Range header meets a real size. CONFIG names the
only statuses that the checks' defaults do not expect and that the request's shape cannot decide
(416 for a well-formed range past that video's end; 413).

Runs at several seeds and example counts (RUNS); each must end with 0 failures.
The in-process tests below check the create body's schema against the server's own parsing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from srserve.engine.config import TINY_DEFAULTS
from srserve.engine.families import check_edit_inputs
from srserve.engine.grammar import integer_range_pattern
from srserve.engine.request import MAX_STEPS, GenerationRequest, SwitchPolicy, resolve_request
from srserve.serving.api import schemas
from srserve.serving.api.http import openapi_document
from srserve.serving.api.schemas import create_request, parse_create
from srserve.serving.control.errors import InvalidRequest
from tests.schema_strategies import conforming
from tests.serving_helpers import wait_state

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("SRSERVE_CONTRACT_SEED", "20261201"))
# (seed, examples per operation, phases): one full run, then another seed and example count through the
# random phases (the examples and coverage phases hardly depend on the seed). More seeds run by setting
# SRSERVE_CONTRACT_SEED; the suite keeps two, as each run costs about a minute here.
RUNS = [
    (SEED, 30, "examples,coverage,fuzzing,stateful"),
    (SEED + 1, 15, "fuzzing,stateful"),
]
SIDE, FRAMES = 64, 17  # the tiny pair's defaults
CREATING = {("POST", "/v1/videos"), ("POST", "/v1/handoffs")}
HANDOFFS = "SRSERVE_CONTRACT_HANDOFFS"  # a folder of handoff files of the served pair
VIDEO = "SRSERVE_CONTRACT_VIDEO"  # the id of a completed video
# Statuses the schema declares that depend on state, not on the request's shape:
#  416 - a well-formed Range past the end of this particular video (or ending before it starts);
#  413 - a body over the deployment's size limit, whatever its fields.
CONFIG = """
[cache]
enabled = false

[generation]
max-examples = {max_examples}

[checks]
negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415",
                                             "422", "428", "429", "5xx"]

[[operations]]
include-operation-id = "downloadVideo"
parameters = {{ "path.video_id" = "${{{video}}}" }}
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "416", "429", "5xx"]
"""

if os.environ.get(HANDOFFS):  # in the schemathesis process: valid handoff bodies are real handoffs
    _BLOBS = [path.read_bytes() for path in sorted(Path(os.environ[HANDOFFS]).iterdir())]
    schemathesis.openapi.media_type("application/octet-stream", st.sampled_from(_BLOBS))


def _cheap(body: Any) -> None:
    """Shrink a create body the server accepts so its job stays small; it stays a body the server accepts."""
    if not isinstance(body, dict):
        return
    try:
        parse_create(body)
    except InvalidRequest:
        return  # a negative case: sent as generated
    for side in ("width", "height"):
        if isinstance(body.get(side), int) and body[side] > SIDE:
            body[side] = SIDE
    if isinstance(body.get("size"), str):
        width, height = (min(int(v), SIDE) for v in body["size"].split("x"))
        body["size"] = f"{width}x{height}"
    if isinstance(body.get("num_frames"), int) and body["num_frames"] > FRAMES:
        body["num_frames"] = FRAMES
    if "seconds" in body:
        body["seconds"] = "1"  # 17 frames at the default rate


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    if (case.method.upper(), case.path) == ("POST", "/v1/videos"):
        _cheap(case.body)


@schemathesis.hook
def after_call(context, case, response) -> None:
    """Cancel every job a call created, so generated jobs never queue up behind each other."""
    if (case.method.upper(), case.path) not in CREATING or response.status_code != 200:
        return
    url = urlsplit(response.request.url)
    video_id = json.loads(response.content)["id"]
    requests.post(f"{url.scheme}://{url.netloc}/v1/videos/{video_id}/cancel", timeout=30)


def run_schemathesis(
    base_url: str, out: Path, seed: int = SEED, max_examples: int = 40, phases: str = "", env: dict | None = None
) -> subprocess.CompletedProcess:
    config = out / "schemathesis.toml"
    config.write_text(CONFIG.format(max_examples=max_examples, video=VIDEO))
    cli = Path(sys.executable).with_name("schemathesis")
    env = {**os.environ, **(env or {}), "SCHEMATHESIS_HOOKS": "tests.test_api_contract", "PYTHONPATH": str(ROOT)}
    command = [
        str(cli),
        "--config-file",
        str(config),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--seed",
        str(seed),
        *(["--phases", phases] if phases else []),
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--max-response-time",
        "60",
        "--report",
        "junit",
        "--report-dir",
        str(out),
        "--no-color",
    ]
    return subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=900)


def _handoffs(engine, folder: Path) -> Path:
    """Handoffs of the served pair (the tiny one), for the schemathesis process to upload."""
    folder.mkdir()
    for seed in (1, 2):
        request = GenerationRequest(prompt="contract", num_inference_steps=4, switch="fixed:2", seed=seed)
        (folder / f"{seed}.srh").write_bytes(engine.generate(request).handoff)
    return folder


def _completed_video(base_url: str) -> str:
    """A completed video for the run's downloads (a run may delete it: each run gets its own)."""
    body = {"prompt": "contract", "num_inference_steps": 2, "switch": "fixed:1"}
    video_id = requests.post(f"{base_url}/v1/videos", json=body, timeout=30).json()["id"]
    assert wait_state(base_url, video_id)["status"] == "completed"
    return video_id


@pytest.mark.slow
def test_schemathesis_all_checks_pass(serving, engine, tmp_path) -> None:
    handoffs = _handoffs(engine, tmp_path / "handoffs")
    for seed, examples, phases in RUNS:
        out = tmp_path / f"seed-{seed}"
        out.mkdir()
        env = {HANDOFFS: str(handoffs), VIDEO: _completed_video(serving.http)}
        run = run_schemathesis(serving.http, out, seed, examples, phases, env)
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-8000:]
        cases = re.search(r"Test cases:\s+(\d+) generated, (\d+) passed", run.stdout)
        assert cases is not None and cases[1] == cases[2] and int(cases[1]) > 0, output[-8000:]
        for phase in phases.split(","):
            assert re.search(rf"✅\s+{phase.capitalize()}", run.stdout), (phase, output[-8000:])
        print(f"schemathesis seed {seed}, {examples} examples ({phases}): {cases[1]} cases, 0 failures")


# -- the create body's schema is exact: valid by the schema exactly when the server accepts it ------

MODEL = "tiny-wan2.1"
_CREATE = openapi_document(MODEL)["components"]["schemas"]["VideoCreateParams"]
_SCHEMA_VALID = jsonschema_rs.validator_for(_CREATE).is_valid  # the validator schemathesis uses
_SAMPLES = [
    *["fixed:5", "fixed:99", "fixed:200", "fixed:201", "fixed:007", "fixed:+5", "fixed:0.3", "fixed:1.", "fixed:."],
    *["adaptive", "adaptive:0.01", "adaptive:0.01:5:30", "adaptive:0.5:160:109", "adaptive:1e-3", "adaptive:0"],
    *["adaptive::0.1", " fixed:5", "64x48", "64X48", "16x2048", "50x64", "2064x16", "1", "16", "17", "4.5", ""],
    *[" ", "\x00", "a\x00b", "\x1c", "\u3000x", MODEL, "sora-2", "5", "abc"],
]
_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-20, 300),
    st.integers(-(2**70), 2**70),
    st.sampled_from([16, 64, 2048, 2064, 17, 257, 261, 0, 1, 120, 121, 50, 200, 201]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 5.0, 50.0, 50.5, 64.0, 1e-9, 1e308]),
    st.text(max_size=6),
    st.sampled_from(_SAMPLES),
    st.from_regex(schemas.SWITCH_PATTERN, fullmatch=True),
    st.from_regex(schemas.SIZE_PATTERN, fullmatch=True),
    st.sampled_from(schemas.SECONDS),
    st.lists(st.integers(), max_size=2),
    st.lists(st.integers(-1, 1001), max_size=4),
    st.lists(st.floats(-0.1, 1.1), max_size=3),
    st.sampled_from([[1000, 750, 500, 250], [250, 500], [500, 500], [1, 1.0], [1.0, 0.5], [0.5, True], [], [None]]),
    st.sampled_from([250, 0.5, 1, 1.0, 0, 1001]),  # a bare value: a one-step list, or not a schedule value
    st.sampled_from(["euler", "unipc", "ddim", "none", "sketch=none", "first_block", "mag", "render=mag"]),
)
_FIELDS = [*schemas.FIELD_TYPES, "extra"]


_PROPERTIES = _CREATE["properties"]
_BODY = st.builds(
    lambda valid, wild: {**valid, **wild},
    st.fixed_dictionaries(
        {"prompt": conforming(_PROPERTIES["prompt"])},
        optional={name: conforming(spec) for name, spec in _PROPERTIES.items() if name != "prompt"},
    ),
    st.one_of(st.just({}), st.dictionaries(st.sampled_from(_FIELDS), _VALUE, max_size=2)),
)


def server_accepts(body: dict[str, Any]) -> bool:
    """What POST /v1/videos does with a JSON body, short of storing the job."""
    try:
        request, _ = create_request(body, MODEL, TINY_DEFAULTS.num_inference_steps)
        resolve_request(request, TINY_DEFAULTS)
        check_edit_inputs("wan2.1", request)  # the ingress's: a text-to-video pair takes no conditioning_scale
    except (InvalidRequest, ValueError):  # a ValidationError is a ValueError
        return False
    return True


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_BODY)
def test_create_schema_is_exact(body: dict[str, Any]) -> None:
    assert _SCHEMA_VALID(body) == server_accepts(body), body


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 3000))
def test_integer_range_pattern(lo: int, hi: int) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    pattern = integer_range_pattern(lo, hi)
    for n in {0, lo - 1, lo, hi, hi + 1, (lo + hi) // 2, 9, 10, 99, 100, 999, 1000}:
        if n >= 0:
            assert bool(re.fullmatch(pattern, str(n))) == (lo <= n <= hi), (lo, hi, n, pattern)
    assert not re.fullmatch(pattern, f"0{hi}")


def _capped(text: str, steps: int) -> str:
    return str(GenerationRequest.with_capped_switch({"prompt": "x", "switch": text}, steps).switch)


def test_switch_steps_are_capped_at_the_step_count() -> None:
    assert _capped("fixed:99", 20) == "fixed:20"  # the large model runs every step
    assert _capped("fixed:2", 6) == "fixed:2"
    assert _capped("adaptive:0.5:160:109", 69) == "adaptive:0.5:69:69"
    assert _capped("adaptive:0.5:30:10", 69) == "adaptive:0.5:10:10"
    assert _capped("load:0.5:5:99", 20) == "load:0.5:5:20"
    assert _capped("fixed:0.3", 20) == "fixed:0.3"
    explicit = {"prompt": "x", "switch": "fixed:9", "num_inference_steps": 3}
    assert GenerationRequest.with_capped_switch(explicit, 50).switch == SwitchPolicy(kind="fixed", step=3)
    with pytest.raises(ValidationError, match="less than or equal to 200"):
        _capped("fixed:500", 20)  # past the engine's limit: refused, never capped
    with pytest.raises(ValidationError, match="min_step"):
        GenerationRequest(prompt="x", switch="adaptive:0.5:30:10")  # the engine itself caps nothing


_PUBLISHED = st.one_of(
    st.tuples(st.just("switch"), st.from_regex(schemas.SWITCH_PATTERN, fullmatch=True)),
    st.tuples(st.just("cache"), st.from_regex(schemas.CACHE_PATTERN, fullmatch=True)),
)


@settings(max_examples=500, deadline=None)
@given(_PUBLISHED)
def test_published_grammars_read_within_their_fields_ranges(published: tuple[str, str]) -> None:
    """Every text the published switch and cache patterns admit is a valid value (switch steps capped)."""
    field, text = published
    GenerationRequest.with_capped_switch({"prompt": "x", field: text}, MAX_STEPS)
