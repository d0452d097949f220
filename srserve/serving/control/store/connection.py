"""How a job-store connection stays bounded when the server hangs rather than fails.

A crashed server refuses connections and resets sockets: every call fails at once. A frozen server
(SIGSTOP, a stuck disk, a network partition without resets) accepts bytes and never answers, and
psycopg waits for it forever; cancelling the waiting coroutine does not help, because psycopg then
asks the frozen server to cancel the query and waits up to ten more seconds for that. So every
round trip runs under a watchdog that, past its bound, shuts the connection's socket down: the
pending read ends at once with an OperationalError (the store's StoreUnavailable) and the pool
drops the connection. Partitions of idle connections are found by TCP keepalives, unacknowledged
writes by the TCP user timeout, and the server ends what a vanished client left behind
(statement, lock and idle-in-transaction timeouts), so a frozen client cannot hold the admission
lock either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import psycopg

logger = logging.getLogger("ray.serve")


def connection_kwargs(connect_timeout_s: float, query_timeout_s: float) -> dict[str, Any]:
    """libpq settings for every store connection: a bounded connect, keepalives, and server-side limits
    slightly past the client's own bound (the client's watchdog fires first; these free the server)."""
    server_ms = int(query_timeout_s * 1000) + 1000
    return {
        "connect_timeout": max(1, math.ceil(connect_timeout_s)),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": server_ms,
        "options": (
            f"-c statement_timeout={server_ms} -c lock_timeout={server_ms} "
            f"-c idle_in_transaction_session_timeout={server_ms}"
        ),
    }


def sever(conn: psycopg.AsyncConnection) -> None:
    """Shut the connection's socket down (both ways) so that a read waiting on a hung server ends now."""
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:  # already closed
        return
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


@contextlib.asynccontextmanager
async def bounded(conn: psycopg.AsyncConnection, seconds: float, what: str) -> AsyncIterator[None]:
    """Run the body's round trips on `conn`; past `seconds` the connection is severed (see `sever`), so
    the body fails with psycopg's OperationalError instead of waiting on a server that does not answer."""

    def expire() -> None:
        logger.warning("job store: %s got no answer in %.1fs; closing its connection", what, seconds)
        sever(conn)

    watchdog = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        yield
    finally:
        watchdog.cancel()


# A connection handed back to the pool this recently answered its last call: it is handed out again
# unchecked. A busy store so saves a round trip per call (about a quarter of an admission here); a
# server lost in that window fails the call itself, as one lost during the call does (StoreUnavailable),
# and the pool replaces the broken connection.
FRESH_S = 1.0


class ConnectionCheck:
    """The pool's check of a connection it hands out (an empty query, bounded as every round trip is),
    skipped for one returned less than FRESH_S ago; `returned` is the pool's reset hook that notes when."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection, float] = weakref.WeakKeyDictionary()

    async def returned(self, conn: psycopg.AsyncConnection) -> None:
        self._returned[conn] = time.monotonic()

    async def __call__(self, conn: psycopg.AsyncConnection) -> None:
        if time.monotonic() - self._returned.pop(conn, -FRESH_S) < FRESH_S:
            return
        async with bounded(conn, self.seconds, "the pool's connection check"):
            await conn.execute("")
