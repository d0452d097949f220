"""Tenants as the control plane sees them: who owns a job, and the limits admission applies to them.

Every job belongs to the tenant that created it (the store's `tenant` column); reads and writes of
another tenant's job answer as for a job that does not exist. Plain Python: the serving config
(srserve.serving.config.tenants) says which tokens name which tenant and resolves them into these.
"""

from __future__ import annotations

from dataclasses import dataclass

# The one tenant of a deployment without `tenants`: open (no token), or the single `auth` token. Jobs
# stored before tenants existed carry it too, so they stay visible to the deployment's one tenant.
DEFAULT_TENANT = "default"
# The highest `priority` any request may ask for (a tenant's `max_priority` is at most this).
PRIORITY_LIMIT = 100


@dataclass(frozen=True)
class Tenant:
    """A tenant's name and limits (None: no limit). `weight` is its share in fair-share ordering."""

    name: str
    max_live_jobs: int | None = None
    max_queued_gpu_s: float | None = None
    max_priority: int = 0
    weight: float = 1.0


# The tenant of a deployment that defines none: no quotas, every priority.
DEFAULT = Tenant(DEFAULT_TENANT, max_priority=PRIORITY_LIMIT)
