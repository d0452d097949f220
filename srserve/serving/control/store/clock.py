"""The database server's clock, read from any process: the one clock every job time is written and compared on.

Deadlines, stall checks, retention and leases compare times written by different processes (an ingress
creates a job, a replica on another machine reports its progress, another ingress sweeps). Machines'
clocks drift apart, so each process's store reads the server's clock (`clock_timestamp()`) now and then and
keeps its offset from the local clock, corrected by half the round trip; between reads the local clock's
rate is trusted (drift is seconds a day, the offset is re-read every `refresh_s`).

A server on this machine (a loopback or Unix-socket DSN, the embedded server) shares this machine's clock:
there the store uses the local clock itself (`on_this_machine`), with none of an estimate's error, so two
processes' stamps of one job (a sketch's end, its render's start) are never out of order by it. Across
machines an estimate is within half a round trip; a span between two machines' stamps can be off by that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import psycopg.conninfo

_LOOPBACK = {"", "localhost", "127.0.0.1", "::1"}

# The server's clock in SQL, epoch seconds: what leases, slots and replica rows are stamped and compared
# with. Volatile: as an index bound read it once, `(SELECT {NOW_SQL})`.
NOW_SQL = "extract(epoch from clock_timestamp())"


def on_this_machine(dsn: str) -> bool:
    """Whether the DSN names a server on this machine (loopback or a Unix socket): it shares our clock."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return False
    hosts = [h for h in str(info.get("hostaddr") or info.get("host") or "").split(",")]
    return all(h in _LOOPBACK or h.startswith("/") for h in hosts)


class DatabaseClock:
    """Epoch seconds on the database server's clock, estimated from this process (a JobStore's default clock)."""

    def __init__(self, local: Callable[[], float] = time.time, refresh_s: float = 60.0) -> None:
        self.local = local  # this machine's wall clock (tests set one off by minutes)
        self.refresh_s = refresh_s
        self.offset = 0.0
        self._synced_at: float | None = None  # time.monotonic() of the last read

    def __call__(self) -> float:
        return self.local() + self.offset

    def stale(self) -> bool:
        return self._synced_at is None or time.monotonic() - self._synced_at > self.refresh_s

    async def sync(self, conn: psycopg.AsyncConnection) -> None:
        """Read the server's clock on `conn` (outside a transaction: `now()` would be the transaction's start)."""
        before = self.local()
        cur = await conn.execute(f"SELECT {NOW_SQL}::double precision AS now")
        row = await cur.fetchone()
        after = self.local()
        server = row["now"] if isinstance(row, dict) else row[0]
        self.offset = float(server) - (before + after) / 2
        self._synced_at = time.monotonic()
