"""The artifact store on both real backends: a local folder, and S3 over HTTP against moto's S3 server."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from srserve.serving.control.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    ArtifactStoreConfig,
    RangeNotSatisfiable,
    parse_range_header,
)
from tests.s3_server import create_bucket, s3_server

BUCKET = "srserve-artifacts"
KEY_ENV = "SRSERVE_TEST_S3_KEY_ID"
SECRET_ENV = "SRSERVE_TEST_S3_SECRET"
# 3.5 chunks of 1000 bytes, every byte value present.
DATA = bytes(i % 251 for i in range(3500))
CHUNK = 1000


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        create_bucket(endpoint, BUCKET)
        yield endpoint


def _s3_config(endpoint: str, **overrides: object) -> ArtifactStoreConfig:
    fields: dict[str, object] = {
        "kind": "s3",
        "bucket": BUCKET,
        "prefix": f"test-{uuid.uuid4().hex[:8]}",  # a fresh namespace per test in the shared bucket
        "endpoint_url": endpoint,
        "allow_http": True,
        "access_key_id_env": KEY_ENV,
        "secret_access_key_env": SECRET_ENV,
    }
    fields.update(overrides)
    return ArtifactStoreConfig.model_validate(fields)


@pytest.fixture(params=["local", "s3"])
def config(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStoreConfig:
    if request.param == "local":
        return ArtifactStoreConfig(kind="local", path=str(tmp_path / "artifacts"))
    monkeypatch.setenv(KEY_ENV, "test")
    monkeypatch.setenv(SECRET_ENV, "test")
    return _s3_config(request.getfixturevalue("s3_endpoint"))


@pytest.fixture
def store(config: ArtifactStoreConfig) -> ArtifactStore:
    return ArtifactStore.from_config(config)


async def _collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


# --- objects: put, get, size, overwrite, delete ---


def test_round_trip_sync_and_async(store: ArtifactStore, config: ArtifactStoreConfig) -> None:
    store.put("videos/video_ab12.mp4", DATA)
    assert store.get("videos/video_ab12.mp4") == DATA
    asyncio.run(store.put_async("handoffs/video_ab12/3.srh", DATA[:10]))
    assert asyncio.run(store.get_async("handoffs/video_ab12/3.srh")) == DATA[:10]
    assert store.get("handoffs/video_ab12/3.srh") == DATA[:10]
    # Another process's store over the same location sees it: nothing lives in this object's memory.
    assert ArtifactStore.from_config(config).get("videos/video_ab12.mp4") == DATA


def test_empty_object(store: ArtifactStore) -> None:
    store.put("videos/empty.mp4", b"")
    assert store.get("videos/empty.mp4") == b""
    assert store.size("videos/empty.mp4") == 0
    assert asyncio.run(_collect(store.stream("videos/empty.mp4"))) == []


def test_size_sync_and_async(store: ArtifactStore) -> None:
    store.put("videos/a.mp4", DATA)
    assert store.size("videos/a.mp4") == len(DATA)
    assert asyncio.run(store.size_async("videos/a.mp4")) == len(DATA)


def test_overwrite_replaces(store: ArtifactStore) -> None:
    store.put("videos/a.mp4", DATA)
    store.put("videos/a.mp4", b"short")
    assert store.get("videos/a.mp4") == b"short"
    assert store.size("videos/a.mp4") == 5
    asyncio.run(store.put_async("videos/a.mp4", b"longer again"))
    assert store.get("videos/a.mp4") == b"longer again"


def test_delete_and_missing_delete(store: ArtifactStore) -> None:
    store.put("videos/a.mp4", DATA)
    store.put("videos/b.mp4", DATA)
    store.delete("videos/a.mp4")
    with pytest.raises(ArtifactNotFound):
        store.get("videos/a.mp4")
    asyncio.run(store.delete_async("videos/b.mp4"))
    with pytest.raises(ArtifactNotFound):
        store.size("videos/b.mp4")
    store.delete("videos/a.mp4")  # already gone: not an error
    asyncio.run(store.delete_async("videos/never.mp4"))


def test_delete_prefix_is_per_folder(store: ArtifactStore, config: ArtifactStoreConfig) -> None:
    doomed = ["handoffs/video_a/0.srh", "handoffs/video_a/1.srh", "handoffs/video_a/extra/2.srh"]
    kept = ["handoffs/video_ab/0.srh", "handoffs/video_a.srh", "videos/video_a.mp4"]
    for key in doomed + kept:
        store.put(key, key.encode())
    assert store.delete_prefix("handoffs/video_a") == 3
    for key in doomed:
        with pytest.raises(ArtifactNotFound):
            store.get(key)
    for key in kept:
        assert store.get(key) == key.encode()
    assert store.delete_prefix("handoffs/video_a/") == 0
    assert store.delete_prefix("handoffs/video_ab/") == 1
    assert store.delete_prefix("nothing/here") == 0
    with pytest.raises(ValueError, match="whole store"):
        store.delete_prefix("/")
    if config.kind == "local":  # emptied folders are cleaned up, not left behind
        assert not (Path(config.path or "") / "handoffs" / "video_a").exists()


def test_delete_prefix_many(store: ArtifactStore) -> None:
    """More than one list page (obstore lists 50 per chunk) and one bulk delete."""
    for i in range(60):
        store.put(f"handoffs/video_many/{i}.srh", b"x")
    assert store.delete_prefix("handoffs/video_many") == 60
    assert store.delete_prefix("handoffs/video_many") == 0


def test_missing_key_raises_not_found(store: ArtifactStore) -> None:
    key = "videos/video_missing.mp4"
    with pytest.raises(ArtifactNotFound) as caught:
        store.get(key)
    assert caught.value.key == key
    with pytest.raises(ArtifactNotFound):
        store.size(key)
    with pytest.raises(ArtifactNotFound):
        asyncio.run(store.get_async(key))
    with pytest.raises(ArtifactNotFound):
        asyncio.run(store.size_async(key))
    for start, end in [(0, None), (5, None), (0, 10), (3, 3)]:
        with pytest.raises(ArtifactNotFound):
            asyncio.run(_collect(store.stream(key, start, end)))


def test_stream_raises_before_first_chunk(store: ArtifactStore) -> None:
    async def first_chunk() -> bytes:
        return await anext(aiter(store.stream("videos/nope.mp4")))

    with pytest.raises(ArtifactNotFound):
        asyncio.run(first_chunk())


def test_large_object_multipart_and_atomic_overwrite(store: ArtifactStore) -> None:
    """6 MiB is past obstore's 5 MiB multipart threshold; concurrent readers only ever see whole versions."""
    size = 6 * 1024 * 1024
    versions = [bytes([n]) * size for n in (1, 2)]
    store.put("videos/big.mp4", versions[0])
    seen: list[bytes] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(4):
                store.put("videos/big.mp4", versions[(i + 1) % 2])
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set() or not seen:
        seen.append(store.get("videos/big.mp4"))
    thread.join()
    assert all(blob in versions for blob in seen), {len(blob) for blob in seen}
    assert store.get("videos/big.mp4") == versions[0]
    # Streaming a big object in small chunks re-cuts obstore's frames to exact sizes.
    chunks = asyncio.run(_collect(store.stream("videos/big.mp4", 1, size - 1, chunk_size=256 * 1024)))
    assert b"".join(chunks) == versions[0][1 : size - 1]
    assert all(len(chunk) == 256 * 1024 for chunk in chunks[:-1])


# --- streaming ---


def test_stream_full(store: ArtifactStore) -> None:
    store.put("videos/a.mp4", DATA)
    chunks = asyncio.run(_collect(store.stream("videos/a.mp4", chunk_size=CHUNK)))
    assert [len(chunk) for chunk in chunks] == [1000, 1000, 1000, 500]
    assert b"".join(chunks) == DATA
    # The default chunk (1 MiB) is bigger than the object: one chunk.
    assert asyncio.run(_collect(store.stream("videos/a.mp4"))) == [DATA]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1000),  # exactly one chunk
        (1000, 2000),  # one chunk starting on a chunk edge
        (999, 2001),  # straddling two edges
        (1000, None),  # open-ended from an edge
        (1500, None),
        (3499, None),  # start == size - 1
        (3499, 3500),
        (0, 3500),
        (0, 9999),  # end past the object: clipped
        (2000, 2001),
        (10, 10),  # empty range of an existing object
    ],
)
def test_stream_range(store: ArtifactStore, start: int, end: int | None) -> None:
    store.put("videos/a.mp4", DATA)
    chunks = asyncio.run(_collect(store.stream("videos/a.mp4", start, end, chunk_size=CHUNK)))
    assert b"".join(chunks) == DATA[start:end]
    assert all(len(chunk) == CHUNK for chunk in chunks[:-1])
    assert all(0 < len(chunk) <= CHUNK for chunk in chunks)


def test_stream_small_chunks(store: ArtifactStore) -> None:
    store.put("videos/a.mp4", DATA)
    chunks = asyncio.run(_collect(store.stream("videos/a.mp4", 7, 3007, chunk_size=64)))
    assert len(chunks) == 47 and [len(c) for c in chunks[-2:]] == [64, 3000 - 46 * 64]
    assert b"".join(chunks) == DATA[7:3007]


@pytest.mark.parametrize(("start", "end"), [(3500, None), (3500, 3600), (9000, None)])
def test_stream_start_past_end(store: ArtifactStore, start: int, end: int | None) -> None:
    store.put("videos/a.mp4", DATA)
    with pytest.raises(RangeNotSatisfiable) as caught:
        asyncio.run(_collect(store.stream("videos/a.mp4", start, end)))
    assert caught.value.size == len(DATA)


@pytest.mark.parametrize(("start", "end", "chunk_size"), [(-1, None, CHUNK), (5, 4, CHUNK), (0, None, 0)])
def test_stream_bad_arguments(store: ArtifactStore, start: int, end: int | None, chunk_size: int) -> None:
    with pytest.raises(ValueError):
        asyncio.run(_collect(store.stream("videos/a.mp4", start, end, chunk_size=chunk_size)))


# --- keys ---

BAD_KEYS = [
    "",
    "/etc/passwd",
    "/videos/a.mp4",
    "../outside.mp4",
    "videos/../../outside.mp4",
    "videos/..",
    "videos/./a.mp4",
    "videos//a.mp4",
    "videos/",
    "videos\\a.mp4",
    "..\\outside",
    "videos/a\x00.mp4",
    "videos/a\n.mp4",
    "videos/a.mp4#1",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_refused(store: ArtifactStore, config: ArtifactStoreConfig, key: str) -> None:
    calls = [
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.size(key),
        lambda: store.delete(key),
        lambda: asyncio.run(store.put_async(key, b"x")),
        lambda: asyncio.run(store.get_async(key)),
        lambda: asyncio.run(store.size_async(key)),
        lambda: asyncio.run(store.delete_async(key)),
        lambda: asyncio.run(_collect(store.stream(key))),
    ]
    if key and not key.endswith("/"):  # "videos/" is a fine prefix (the folder videos)
        calls.append(lambda: store.delete_prefix(key))
    for call in calls:
        with pytest.raises(ValueError) as caught:
            call()
        assert repr(key) in str(caught.value) or not key
    if config.kind == "local":  # nothing written anywhere near the root
        root = Path(config.path or "")
        assert not root.exists() or not any(root.rglob("*"))
        assert not (root.parent / "outside.mp4").exists()


def test_good_keys_accepted(store: ArtifactStore) -> None:
    for key in ["videos/video_0123abcd.mp4", "handoffs/video_0123abcd/3.srh", "a", "a-b_c.d/e f/..g"]:
        store.put(key, key.encode())
        assert store.get(key) == key.encode()


# --- parse_range_header ---


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-99", 100, (0, 100)),
        ("bytes=0-0", 100, (0, 1)),
        ("bytes=10-19", 100, (10, 20)),
        ("bytes=99-99", 100, (99, 100)),
        ("bytes=50-500", 100, (50, 100)),  # end past the object: clipped
        ("bytes=100-", 1000, (100, 1000)),  # open-ended
        ("bytes=0-", 1, (0, 1)),
        ("bytes=-500", 1000, (500, 1000)),  # suffix
        ("bytes=-500", 100, (0, 100)),  # suffix longer than the object: all of it
        ("bytes=-1", 100, (99, 100)),
        ("Bytes = 5 - 9 ", 100, (5, 10)),  # unit is case-insensitive, whitespace tolerated
    ],
)
def test_parse_range_header_valid(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range_header(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),  # starts at the end
        ("bytes=200-300", 100),  # starts past the end
        ("bytes=-0", 100),  # empty suffix
        ("bytes=0-0", 0),  # anything of an empty object
        ("bytes=-5", 0),
        ("bytes=9-5", 100),  # ends before it starts
        ("bytes=0-1,5-6", 100),  # multi-range: not supported, refused
        ("bytes=-", 100),  # malformed from here on
        ("bytes=", 100),
        ("", 100),
        ("bytes 0-5", 100),
        ("items=0-5", 100),
        ("bytes=a-5", 100),
        ("bytes=0-5x", 100),
        ("bytes=-5-10", 100),
        ("bytes=1.5-2", 100),
        ("bytes=\u0661-5", 100),  # a non-ASCII digit
    ],
)
def test_parse_range_header_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range_header(header, size)
    assert caught.value.size == size


def test_range_header_drives_stream(store: ArtifactStore) -> None:
    """What an HTTP handler does: size, parse the header, stream that range."""
    store.put("videos/a.mp4", DATA)

    async def serve(header: str) -> bytes:
        size = await store.size_async("videos/a.mp4")
        span = parse_range_header(header, size)
        assert span is not None
        return b"".join(await _collect(store.stream("videos/a.mp4", span[0], span[1], chunk_size=CHUNK)))

    assert asyncio.run(serve("bytes=-500")) == DATA[-500:]
    assert asyncio.run(serve("bytes=1000-1999")) == DATA[1000:2000]
    assert asyncio.run(serve("bytes=3000-")) == DATA[3000:]


# --- configuration and construction ---


def test_s3_without_bucket_refused_naming_bucket() -> None:
    with pytest.raises(ValidationError) as caught:
        ArtifactStoreConfig(kind="s3")
    assert "bucket" in str(caught.value)
    assert caught.value.errors()[0]["loc"] == ("bucket",)
    with pytest.raises(ValidationError, match="bucket"):
        ArtifactStoreConfig(kind="s3", bucket="")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"kind": "local", "bucket": "b"}, "bucket"),  # a bucket with kind local would silently go to disk
        ({"kind": "local", "prefix": "p"}, "prefix"),
        ({"kind": "local", "endpoint_url": "http://x:9000"}, "endpoint_url"),
        ({"kind": "s3", "bucket": "b", "path": "/tmp/x"}, "path"),
        ({"kind": "s3", "bucket": "b", "endpoint_url": "http://127.0.0.1:9000"}, "allow_http"),
        ({"kind": "s3", "bucket": "b", "prefix": "a/../b"}, "a/../b"),
        ({"kind": "gcs"}, "kind"),
        ({"kind": "local", "bucke": "typo"}, "bucke"),  # extra="forbid"
    ],
)
def test_config_refuses_inconsistent_settings(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        ArtifactStoreConfig.model_validate(fields)


def test_config_defaults_and_prefix_cleanup() -> None:
    assert ArtifactStoreConfig().kind == "local"
    config = ArtifactStoreConfig(kind="s3", bucket="b", prefix="/srserve/prod/")
    assert config.prefix == "srserve/prod"
    assert config.region == "us-east-1" and config.endpoint_url is None and not config.allow_http


def test_local_default_root_under_srserve_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSERVE_HOME", str(tmp_path / "home"))
    store = ArtifactStore.from_config(ArtifactStoreConfig())
    root = (tmp_path / "home" / "artifacts").resolve()
    assert store.describe() == f"local:{root}"
    store.put("videos/v.mp4", b"abc")
    assert (root / "videos" / "v.mp4").read_bytes() == b"abc"
    assert not [p for p in root.rglob("*") if "#" in p.name]  # no staged upload left behind


def test_s3_describe_and_credentials_from_named_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "test")
    monkeypatch.setenv(SECRET_ENV, "test")
    config = _s3_config(s3_endpoint, prefix="/team/run1/")
    store = ArtifactStore.from_config(config)
    assert store.describe() == f"s3://{BUCKET}/team/run1 at {s3_endpoint}"
    store.put("videos/v.mp4", b"abc")
    # The prefix is a real key prefix in the bucket: a store on the bare bucket sees it under it.
    bare = ArtifactStore.from_config(_s3_config(s3_endpoint, prefix=""))
    assert bare.describe() == f"s3://{BUCKET} at {s3_endpoint}"
    assert bare.get("team/run1/videos/v.mp4") == b"abc"
    assert bare.delete_prefix("team/run1") == 1


def test_s3_half_credentials_refused(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "test")
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ValueError, match=SECRET_ENV):
        ArtifactStore.from_config(_s3_config(s3_endpoint))
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv(SECRET_ENV, "test")
    with pytest.raises(ValueError, match=KEY_ENV):
        ArtifactStore.from_config(_s3_config(s3_endpoint))


def test_s3_no_credentials_with_endpoint_refused(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused at construction, naming both variables, rather than failing at the first request."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ValueError, match=f"{KEY_ENV}.*{SECRET_ENV}"):
        ArtifactStore.from_config(_s3_config(s3_endpoint))
