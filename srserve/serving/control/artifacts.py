"""Artifact storage for finished videos and sketch→render handoff blobs, on obstore.

Videos and handoffs live in one object store (a local folder, or an S3-compatible bucket), never in an
actor's memory: a replica that dies loses nothing, and any replica (or the HTTP ingress) can read what another
wrote. Both backends go through obstore, so local runs and clusters exercise the same code path.

Keys are relative, slash-separated names such as ``videos/video_<hex>.mp4`` and ``handoffs/video_<hex>/3.srh``.
They are checked before any backend sees them, so the local backend can never write outside its root.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import obstore as obs
from obstore.exceptions import GenericError
from obstore.store import LocalStore, S3Store
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

if TYPE_CHECKING:
    from obstore import GetOptions
    from obstore.store import ObjectStore


__all__ = [
    "ArtifactNotFound",
    "ArtifactStore",
    "ArtifactStoreConfig",
    "RangeNotSatisfiable",
    "parse_range_header",
]


class ArtifactStoreConfig(BaseModel):
    """Where artifacts live: a local folder (one machine) or an S3-compatible bucket (a cluster)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "s3"] = "local"
    # local: the root folder; None means $SRSERVE_HOME/artifacts.
    path: str | None = None
    # s3: the bucket (required), a key prefix inside it, and an S3-compatible endpoint (None means AWS itself).
    bucket: str | None = Field(default=None, validate_default=True)
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    # Names of the environment variables that hold the credentials (the values never sit in a config file).
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    # obstore refuses plain-HTTP endpoints unless told otherwise.
    allow_http: bool = False
    # local: a folder every node mounts at `path` (NFS, a shared volume), so a multi-node cluster may use it.
    shared: bool = False
    # Set by srserve for a local folder that is not shared: the Ray node it lives on (replicas must run there).
    home_node: str | None = None

    @field_validator("bucket")
    @classmethod
    def _bucket_for_s3(cls, bucket: str | None, info: ValidationInfo) -> str | None:
        """An S3 store without a bucket cannot work; say so at load time, naming the field."""
        if info.data.get("kind") == "s3" and not bucket:
            raise ValueError("bucket is required when kind is 's3'")
        return bucket

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, prefix: str) -> str:
        """A prefix is a key fragment: same rules as keys, surrounding slashes dropped."""
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        return prefix

    @model_validator(mode="after")
    def _fields_match_kind(self) -> ArtifactStoreConfig:
        """Refuse settings the chosen kind would silently ignore (e.g. a bucket with kind: local)."""
        if self.kind == "local":
            stray = [name for name in ("bucket", "endpoint_url") if getattr(self, name)]
            if self.prefix:
                stray.append("prefix")
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply to kind 's3' (kind is 'local'); set kind: s3")
        else:
            if self.path is not None or self.shared:
                raise ValueError("path and shared only apply to kind 'local' (kind is 's3')")
            if self.endpoint_url and self.endpoint_url.startswith("http://") and not self.allow_http:
                raise ValueError(f"endpoint_url {self.endpoint_url!r} is plain HTTP: set allow_http: true")
        return self


class ArtifactNotFound(Exception):
    """No object at this key (never written, deleted, or expired)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"artifact not found: {key!r}")
        self.key = key


class RangeNotSatisfiable(ValueError):
    """An HTTP Range that cannot be served for an object of `size` bytes (answer 416 with `bytes */size`)."""

    def __init__(self, size: int, detail: str = "") -> None:
        super().__init__(f"range not satisfiable for {size} bytes" + (f": {detail}" if detail else ""))
        self.size = size


# LocalStore stages uploads as `<name>#<n>` and refuses such names; '#' is refused everywhere so both
# backends accept exactly the same keys.
_FORBIDDEN_CHARS = re.compile(r"[\\\x00-\x1f\x7f#]")


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative object name, else raise ValueError naming it.

    Refused: empty, absolute, trailing slash, empty/'.'/'..' segments, backslashes, NUL and other control
    characters, '#'. obstore would normalise or reject some of these itself, but differently per backend.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"artifact key must be a non-empty string, got {key!r}")
    if key.startswith("/"):
        raise ValueError(f"artifact key {key!r} is absolute; keys are relative to the store")
    if _FORBIDDEN_CHARS.search(key):
        raise ValueError(f"artifact key {key!r} contains a backslash, '#', NUL or control character")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"artifact key {key!r} has an empty, '.' or '..' segment")
    return key


class ArtifactStore:
    """One store for videos and handoffs, on obstore (LocalStore or S3Store): never an actor's memory.

    The sync methods are for worker threads (obstore releases the GIL while it works); the async ones for
    asyncio code in replicas and the ingress. Both share one obstore store, which is safe across threads.
    """

    def __init__(self, store: ObjectStore, description: str) -> None:
        self._store = store
        self._description = description

    @classmethod
    def from_config(cls, config: ArtifactStoreConfig) -> ArtifactStore:
        """Build the backend the config names; credentials are read from the environment now.

        S3 credentials: if both variables named by the config are set, they are used. If only one is set,
        ValueError names the missing one. If neither is set: with `endpoint_url` (MinIO, Ceph, moto...)
        ValueError names both, now rather than at the first request (unsigned requests are no way out: an
        anonymous client may write but then gets 403 reading its own private objects); without
        `endpoint_url` (AWS itself) obstore's own credential chain applies (AWS_* variables, web identity,
        instance metadata).
        """
        if config.kind == "local":
            if config.path is not None:
                root = Path(config.path).expanduser()
            else:
                # Imported here: srserve.engine pulls in torch, which a storage client should not need.
                from srserve.engine.config import srserve_home

                root = srserve_home() / "artifacts"
            root = root.resolve()
            root.mkdir(parents=True, exist_ok=True)
            # automatic_cleanup removes folders left empty by deletes (one per video's handoffs).
            store = LocalStore(root, automatic_cleanup=True)
            return cls(store, f"local:{root}")

        assert config.bucket is not None  # the validator guarantees it
        settings: dict[str, Any] = {"region": config.region}
        if config.endpoint_url:
            settings["endpoint"] = config.endpoint_url
        key_id = os.environ.get(config.access_key_id_env) or None
        secret = os.environ.get(config.secret_access_key_env) or None
        if key_id and secret:
            settings["access_key_id"] = key_id
            settings["secret_access_key"] = secret
        elif key_id or secret:
            missing = config.secret_access_key_env if key_id else config.access_key_id_env
            raise ValueError(f"S3 credentials: ${missing} is not set (its pair is)")
        elif config.endpoint_url:
            raise ValueError(
                f"S3 endpoint {config.endpoint_url} needs credentials: set ${config.access_key_id_env} "
                f"and ${config.secret_access_key_env} (or name other variables in access_key_id_env/"
                "secret_access_key_env)"
            )
        store = S3Store(
            config.bucket,
            prefix=config.prefix or None,
            client_options={"allow_http": config.allow_http},
            **settings,
        )
        description = f"s3://{config.bucket}" + (f"/{config.prefix}" if config.prefix else "")
        if config.endpoint_url:
            description += f" at {config.endpoint_url}"
        return cls(store, description)

    def describe(self) -> str:
        """Where the artifacts go, for logs: 'local:/path' or 's3://bucket/prefix [at endpoint]'."""
        return self._description

    def __repr__(self) -> str:
        return f"ArtifactStore({self._description})"

    # --- sync API (worker threads) ---

    def put(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, replacing any object there; readers see the old or the new, never half.

        Atomic on both backends: LocalStore writes a staged `<name>#<n>` file and renames it into place,
        S3 publishes an object (single or multipart) only when the upload completes.
        """
        obs.put(self._store, check_key(key), data)

    def get(self, key: str) -> bytes:
        """The whole object; raises ArtifactNotFound."""
        try:
            return bytes(obs.get(self._store, check_key(key)).bytes())
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None

    def size(self, key: str) -> int:
        """The object's size in bytes; raises ArtifactNotFound."""
        try:
            return int(obs.head(self._store, check_key(key))["size"])
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error (S3 does not tell, LocalStore does)."""
        with contextlib.suppress(FileNotFoundError):
            obs.delete(self._store, check_key(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (a folder: 'handoffs/video_ab' spares 'handoffs/video_abc/...').

        Returns how many objects were deleted. An empty prefix is refused: it would wipe the whole store.
        """
        folder = prefix.rstrip("/")
        if not folder:
            raise ValueError(f"refusing to delete everything: prefix {prefix!r} names the whole store")
        check_key(folder)
        paths = [meta["path"] for batch in obs.list(self._store, folder) for meta in batch]
        if not paths:
            return 0
        try:
            obs.delete(self._store, paths)
        except FileNotFoundError:
            # Something else deleted one meanwhile (LocalStore reports it); finish one by one.
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    obs.delete(self._store, path)
        return len(paths)

    # --- async API (asyncio code) ---

    async def put_async(self, key: str, data: bytes) -> None:
        """Async `put` (same atomicity)."""
        await obs.put_async(self._store, check_key(key), data)

    async def get_async(self, key: str) -> bytes:
        """Async `get`; raises ArtifactNotFound."""
        try:
            result = await obs.get_async(self._store, check_key(key))
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None

    async def size_async(self, key: str) -> int:
        """Async `size`; raises ArtifactNotFound."""
        try:
            return int((await obs.head_async(self._store, check_key(key)))["size"])
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None

    async def delete_async(self, key: str) -> None:
        """Async `delete`; a missing key is not an error."""
        with contextlib.suppress(FileNotFoundError):
            await obs.delete_async(self._store, check_key(key))

    async def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) of the object in chunks of exactly `chunk_size` (the last may be shorter).

        An async generator: `async for chunk in store.stream(key, ...)`. Only one ranged GET is made and
        read incrementally, so memory stays around two chunks whatever the object's size. `end` past the
        object's end is clipped to it. Raises ArtifactNotFound (missing) or RangeNotSatisfiable (`start` at
        or past the end of a non-empty range) before yielding anything.
        """
        check_key(key)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad byte range [{start}, {end}) for {key!r}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if end == start:
            await self.size_async(key)  # nothing to send, but a missing object is still an error
            return
        options: GetOptions = {}
        if end is not None:
            options["range"] = (start, end)
        elif start > 0:
            options["range"] = {"offset": start}
        try:
            result = await obs.get_async(self._store, key, options=options)
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None
        except GenericError:
            # obstore reports a range starting past the end as a generic error (S3: 416, local: InvalidRange).
            size = await self.size_async(key)
            if start >= size:
                raise RangeNotSatisfiable(size, f"start {start}") from None
            raise
        # min_chunk_size only guarantees a lower bound (obstore glues network/file frames together);
        # re-cut so callers get predictable chunk sizes.
        pending = b""
        async for piece in result.stream(min_chunk_size=chunk_size):
            data = pending + piece if pending else piece
            whole = len(data) - len(data) % chunk_size
            for offset in range(0, whole, chunk_size):
                yield data[offset : offset + chunk_size]
            pending = data[whole:]
        if pending:
            yield pending


_RANGE = re.compile(r"bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)", re.ASCII | re.IGNORECASE)


def parse_range_header(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse an HTTP `Range` header for one byte range into (start, end_exclusive) within `size` bytes.

    None when there is no header (serve the whole object with 200). Forms: 'bytes=0-99', 'bytes=100-'
    (open-ended), 'bytes=-500' (the last 500 bytes, or all of a shorter object); an end past the object is
    clipped. Raises RangeNotSatisfiable for malformed headers, ranges starting at/after the end, any range
    of an empty object, and multi-range requests ('bytes=0-1,5-6'): srserve serves single ranges only
    (video players never ask for more) and says so with 416 rather than answering a subset.
    """
    if header is None:
        return None
    if "," in header:
        raise RangeNotSatisfiable(size, f"multiple ranges are not supported: {header!r}")
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        raise RangeNotSatisfiable(size, f"malformed Range header {header!r}")
    first, last = match.groups()
    if not first and not last:
        raise RangeNotSatisfiable(size, f"malformed Range header {header!r}")
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size, f"empty suffix range {header!r}")
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        raise RangeNotSatisfiable(size, f"range ends before it starts: {header!r}")
    if start >= size:
        raise RangeNotSatisfiable(size, f"range starts at or past the end: {header!r}")
    end = size if not last else min(int(last) + 1, size)
    return start, end
