"""The control plane as a client sees it: push progress (SSE), ranged downloads from artifact storage,
deletes and retention that remove the bytes too. The last two also run without Ray, on the real store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import requests

from srserve.serving.control.artifacts import ArtifactNotFound, ArtifactStore, ArtifactStoreConfig
from srserve.serving.control.jobs import Job, JobState, handoff_key, video_key
from srserve.serving.control.orchestrator import Orchestrator, OrchestratorSettings
from srserve.serving.control.store.job_store import JobStore, ProgressUpdate
from tests.serving_helpers import get, post, wait_state

BODY = {"prompt": "a koi pond at noon", "num_inference_steps": 8, "switch": "fixed:3", "seed": 5}


def _sse(base: str, job_id: str, headers: dict | None = None) -> list[tuple[str, str | None, dict]]:
    """(event, id, data) of the whole stream."""
    out, event, event_id = [], None, None
    with requests.get(f"{base}/v1/videos/{job_id}/events", stream=True, timeout=120, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                out.append((event, event_id, json.loads(line[6:])))
                event_id = None
    return out


@pytest.mark.slow
def test_progress_is_pushed_as_server_sent_events(serving) -> None:
    job = post(serving.http, "/v1/videos", json=BODY).json()
    stream = _sse(serving.http, job["id"])
    progress = [d for e, _, d in stream if e == "progress"]
    (event, _, final) = stream[-1]
    assert event == "done" and final["status"] == "completed" and final["id"] == job["id"]
    states = [p["state"] for p in progress]
    assert states[0] == "queued" and states[-1] == "completed"
    order = ["queued", "encoding", "sketching", "handed_off", "rendering", "decoding", "completed"]
    assert [s for s in order if s in states] == order  # every stage, in order
    assert [p["seq"] for p in progress] == sorted(p["seq"] for p in progress)
    sketch_steps = [p["step"] for p in progress if p["state"] == "sketching"]
    assert sketch_steps == sorted(sketch_steps) and max(sketch_steps) == 3
    # Resuming with Last-Event-ID replays only what came after it.
    ids = [i for _, i, _ in stream if i is not None]
    again = _sse(serving.http, job["id"], headers={"Last-Event-ID": ids[2]})
    assert [i for _, i, _ in again if i is not None] == ids[3:]
    assert get(serving.http, "/v1/videos/video_nope/events").status_code == 404


@pytest.mark.slow
def test_download_streams_from_storage_and_honours_range(serving) -> None:
    job = post(serving.http, "/v1/videos", json={**BODY, "seed": 6}).json()
    assert wait_state(serving.http, job["id"])["status"] == "completed"
    url = f"/v1/videos/{job['id']}/content"
    whole = get(serving.http, url)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    size = len(whole.content)
    assert int(whole.headers["content-length"]) == size and whole.content[4:8] == b"ftyp"
    part = get(serving.http, url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == whole.content[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{size}"
    tail = get(serving.http, url, headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == whole.content[-16:]
    bad = get(serving.http, url, headers={"Range": f"bytes={size}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{size}"
    # Deleting the job deletes its video from storage too.
    assert requests.delete(serving.http + f"/v1/videos/{job['id']}", timeout=30).status_code == 200
    assert get(serving.http, url).status_code == 404


def test_retention_and_delete_remove_the_artifacts(store_dsn: str, tmp_path: Path) -> None:
    """Without Ray: the orchestrator's retention deletes expired jobs' videos and handoffs from storage."""

    async def go():
        store = JobStore(store_dsn)
        await store.migrate()
        artifacts = ArtifactStore.from_config(ArtifactStoreConfig(path=str(tmp_path / "artifacts")))

        async def run_stage(stage: str, ticket: dict) -> dict:  # a stage never runs here
            raise AssertionError(stage)

        orchestrator = Orchestrator(
            store, artifacts, "o", OrchestratorSettings(retain_jobs=1, retain_age_s=None), run_stage, lambda e: False
        )
        for job_id in ("old", "new"):
            await store.create(job_id, {"prompt": "x"}, 4, None, "o", 30, ())
            fence = (await store.begin_attempt(job_id, "sketch", "o", 3)).fence
            await store.apply_progress([ProgressUpdate(job_id, fence, JobState.SKETCHING, 2, 2)])
            artifacts.put(handoff_key(job_id, fence), b"handoff")
            assert isinstance(await store.record_handoff(job_id, fence, handoff_key(job_id, fence), 7, 2, {}), Job)
            fence = (await store.begin_attempt(job_id, "render", "o", 3)).fence
            await store.apply_progress(
                [
                    ProgressUpdate(job_id, fence, JobState.RENDERING, 3, 4),
                    ProgressUpdate(job_id, fence, JobState.DECODING, 4, 4),
                ]
            )
            artifacts.put(video_key(job_id, fence), b"mp4")
            assert isinstance(await store.complete(job_id, fence, video_key(job_id, fence), 3, {}, None), Job)
        old = await store.get("old")
        assert await orchestrator.expire() == 1
        assert await store.get("old") is None and await store.get("new") is not None
        with pytest.raises(ArtifactNotFound):
            artifacts.get(old.video_key)
        with pytest.raises(ArtifactNotFound):
            artifacts.get(old.handoff_key)
        new = await store.get("new")
        assert artifacts.get(new.video_key) == b"mp4"
        await store.forget("new")
        await orchestrator.delete_artifacts("new")
        with pytest.raises(ArtifactNotFound):
            artifacts.get(new.video_key)
        await store.close()

    asyncio.run(go())
