"""A few-step schedule served end to end on the session's tiny Wan2.1 app: 4 Euler steps at the published
timesteps [1000, 750, 500, 250], shift 5, guidance 1, over the openai SDK (its `timesteps[]` form fields),
a urlencoded form (comma-separated text) and gRPC, each video byte for byte the in-process engine's; bad
schedules refused naming the field, with no job created. The edges without a cluster:
tests/test_few_step_api.py."""

from __future__ import annotations

import grpc
import openai
import pytest
import torch

from srserve.client import GenerationFailed, SrserveClient
from srserve.client.grpc_client import make_request
from srserve.engine import GenerationRequest
from tests.serving_helpers import get, post, wait_state

pytestmark = pytest.mark.slow
PROMPT = "a paper boat on a stream"
FEW = [1000, 750, 500, 250]
DISTILLED = {"scheduler": "euler", "timesteps": FEW, "shift": 5.0, "guidance_scale": 1.0}
BODY = {**DISTILLED, "switch": "fixed:2", "seed": 3}
SCHEDULE = {"scheduler": "euler", "timesteps": FEW, "sigmas": None, "shift": 5.0}


@pytest.fixture(scope="module")
def local(engine):
    """The in-process engine's result for the same request."""
    torch.set_num_threads(1)
    return engine.generate(GenerationRequest(prompt=PROMPT, **BODY))


def _newest(base: str) -> str | None:
    """The newest job's id (to see that a refused request created none)."""
    return get(base, "/v1/videos", params={"limit": 1}).json()["first_id"]


def test_openai_sdk_and_form_few_step_jobs_equal_the_engine(serving, local) -> None:
    client = openai.OpenAI(base_url=serving.http + "/v1", api_key="unused", max_retries=10)
    video = client.videos.create(prompt=PROMPT, extra_body=BODY)  # multipart: `timesteps[]` per item
    form = {**{k: str(v) for k, v in BODY.items()}, "prompt": PROMPT, "timesteps": ",".join(map(str, FEW))}
    posted = post(serving.http, "/v1/videos", data=form)  # urlencoded, the list as comma-separated text
    assert posted.status_code == 200, posted.text
    for job_id in (video.id, posted.json()["id"]):
        done = wait_state(serving.http, job_id, timeout_s=300)
        assert done["status"] == "completed", done
        details = done["srserve"]
        assert details["num_steps"] == 4 and details["switch_step"] == 2, details
        assert details["schedule"] == SCHEDULE and details["cache"] == "none", details
        assert get(serving.http, f"/v1/videos/{job_id}/content").content == local.video


def test_grpc_few_step_job_equals_the_engine(serving, local) -> None:
    with SrserveClient(serving.grpc, serving.app_name) as client:
        video = client.generate(make_request(PROMPT, **BODY))
    job = video.job
    assert job.state == "completed" and job.num_steps == 4 and job.switch_step == 2
    assert (job.schedule.scheduler, list(job.schedule.timesteps), job.schedule.shift) == ("euler", FEW, 5.0)
    assert video.mp4 == local.video


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"timesteps": [1000, 500, 500]}, "timesteps"),
        ({"timesteps": [1000, 1001]}, "timesteps.1"),
        ({"timesteps": FEW, "sigmas": [1.0, 0.5]}, "sigmas"),
        ({"timesteps": FEW, "num_inference_steps": 4}, "num_inference_steps"),
        ({"timesteps": FEW, "cache": "first_block"}, "cache"),
        ({"sigmas": [1.5]}, "sigmas.0"),
        ({"scheduler": "ddim"}, "scheduler"),
        ({"shift": 0}, "shift"),
    ],
)
def test_bad_schedules_are_refused_over_http_creating_no_job(serving, body: dict, param: str) -> None:
    before = _newest(serving.http)
    r = post(serving.http, "/v1/videos", json={"prompt": PROMPT, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_argument" and error["param"] == param, error
    assert _newest(serving.http) == before


def test_bad_schedules_are_refused_over_forms_and_grpc_creating_no_job(serving) -> None:
    before = _newest(serving.http)
    r = post(serving.http, "/v1/videos", data={"prompt": PROMPT, "timesteps": "1000,x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "timesteps", r.text
    with SrserveClient(serving.grpc, serving.app_name) as client:
        for fields, needle in (
            ({"timesteps": FEW, "num_inference_steps": 3}, "timesteps"),
            ({"timesteps": FEW, "cache": "first_block"}, "cache"),
            ({"scheduler": "ddim"}, "scheduler"),
        ):
            with pytest.raises(GenerationFailed) as info:
                client.submit(make_request(PROMPT, **fields))
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and needle in info.value.details
    assert _newest(serving.http) == before
