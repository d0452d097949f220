"""Tenants: which bearer tokens name which tenant, and each tenant's quotas, priority bound and weight.

    tenants:
      studio: {token_env: [STUDIO_TOKEN, STUDIO_TOKEN_NEXT], max_live_jobs: 20, max_priority: 5, weight: 2}
      batch:  {token_env: BATCH_TOKEN, max_live_jobs: 200}

Tokens come only from the environment (a Kubernetes Secret mounted as variables), never from the file;
a tenant may list several variables so a token can be rotated without downtime (docs/operations.md).
Without `tenants` the single-token `auth` is the one-tenant case, and neither is open: every job then
belongs to the one default tenant. The ingress resolves this config into `TenantTokens` (beside it,
as `auth.py` does for its token) and asks it who a request's `Authorization` header names.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from srserve.serving.config.auth import MIN_TOKEN_CHARS, AuthConfig
from srserve.serving.control.tenants import DEFAULT, PRIORITY_LIMIT, Tenant

logger = logging.getLogger("ray.serve")

ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A tenant's name is a metrics label and a word in logs: short, plain.
TenantName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class TenantConfig(BaseModel):
    """One tenant: the variables holding its tokens, its quotas (unset: none), its priority bound and weight."""

    model_config = ConfigDict(extra="forbid")

    token_env: str | list[str] = Field(
        description="environment variable(s) holding the tenant's bearer token(s); several allow rotation"
    )
    max_live_jobs: int | None = Field(None, ge=1, description="jobs not yet finished; more are refused (429)")
    max_queued_gpu_s: float | None = Field(
        None, gt=0, description="predicted GPU-seconds of its unfinished jobs, this one's included; past it: 429"
    )
    max_priority: int = Field(0, ge=0, le=PRIORITY_LIMIT, description="the highest `priority` its requests may set")
    weight: float = Field(1.0, gt=0, description="its share of the GPUs in fair-share ordering")

    @field_validator("token_env")
    @classmethod
    def _variables(cls, value: str | list[str]) -> list[str]:
        names = [value] if isinstance(value, str) else list(value)
        if not names:
            raise ValueError("name at least one environment variable")
        for name in names:
            if not isinstance(name, str) or not _is_env_name(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        if len(set(names)) != len(names):
            raise ValueError("a variable is listed twice")
        return names

    def env_vars(self) -> list[str]:
        """The variables, as a list (one name in the file is a list of one)."""
        return [self.token_env] if isinstance(self.token_env, str) else list(self.token_env)

    def tenant(self, name: str) -> Tenant:
        return Tenant(name, self.max_live_jobs, self.max_queued_gpu_s, self.max_priority, self.weight)


def _is_env_name(name: str) -> bool:
    return re.fullmatch(ENV_VAR_PATTERN, name) is not None


def _digest(token: str) -> bytes:
    """Tokens are compared as SHA-256 digests: equal lengths, so not even a token's length shows in the time."""
    return hashlib.sha256(token.encode()).digest()


class TenantTokens:
    """Who a bearer token belongs to. `None` tokens: open, every request is the default tenant."""

    def __init__(self, tokens: Sequence[tuple[str, Tenant]] | None) -> None:
        self._entries = None if tokens is None else [(_digest(token), tenant) for token, tenant in tokens]
        self._tenants = [DEFAULT] if tokens is None else list({t.name: t for _, t in tokens}.values())

    @property
    def open(self) -> bool:
        """No token is needed (neither `auth` nor `tenants` is set)."""
        return self._entries is None

    @property
    def tenants(self) -> list[Tenant]:
        return list(self._tenants)

    def max_priority(self) -> int:
        """The highest priority any tenant may ask for (the published schema's bound)."""
        return max(t.max_priority for t in self._tenants)

    def identify(self, authorization: str | None) -> Tenant | None:
        """The tenant `Authorization: Bearer <token>` names, None for a missing or wrong token.

        The presented token is compared with every configured one (hmac.compare_digest over digests of equal
        length) and the loop never stops at a match: a wrong token takes the same time whatever it is, and
        the answer gives no hint whether a tenant, or a token of a given length, exists."""
        if self._entries is None:
            return DEFAULT
        scheme, _, presented = (authorization or "").partition(" ")
        given = _digest(presented.strip())
        matches = [hmac.compare_digest(given, digest) for digest, _ in self._entries]
        found = next((tenant for hit, (_, tenant) in zip(matches, self._entries, strict=True) if hit), None)
        return found if scheme.lower() == "bearer" else None


def resolve_tokens(
    auth: AuthConfig, tenants: Mapping[str, TenantConfig], environ: Mapping[str, str] | None = None
) -> TenantTokens:
    """The deployment's tokens, read from the environment (the ingress replica's): the tenants', else the one
    `auth` token as the default tenant's, else none (open).

    A tenant's variable that is unset or empty is skipped (that is how an old token is revoked: remove it
    from the Secret), but a tenant with no token set at all is refused, and so is a token two tenants share."""
    environ = os.environ if environ is None else environ
    if not tenants:
        token = auth.secret()
        return TenantTokens(None if token is None else [(token, DEFAULT)])
    tokens: list[tuple[str, Tenant]] = []
    owners: dict[bytes, tuple[str, str]] = {}  # digest -> (tenant, variable)
    for name, config in tenants.items():
        tenant = config.tenant(name)
        found = []
        for var in config.env_vars():
            value = environ.get(var, "")
            if not value:
                continue
            if len(value) < MIN_TOKEN_CHARS:
                raise ValueError(f"tenants.{name}: {var} holds a token shorter than {MIN_TOKEN_CHARS} characters")
            owner = owners.setdefault(_digest(value), (name, var))
            if owner[0] != name:
                raise ValueError(f"tenants.{name}: {var} holds the same token as {owner[1]} (tenant {owner[0]})")
            found.append(var)
            tokens.append((value, tenant))
        if not found:
            raise ValueError(
                f"tenants.{name}: none of its token variables ({', '.join(config.env_vars())}) is set; "
                "set one in the ingress's environment"
            )
        skipped = [v for v in config.env_vars() if v not in found]
        if skipped:
            logger.info(
                "tenant %s: token variable(s) %s unset; their tokens are not accepted", name, ", ".join(skipped)
            )
    return TenantTokens(tokens)
