"""Optional single bearer token shared by the HTTP and gRPC APIs: the config and its resolved check.

One token is the one-tenant case of `tenants` (srserve.serving.config.tenants): the ingress resolves
both with `resolve_tokens`, which takes this token as the default tenant's. The check lives beside its
config because resolving the config yields it, and nothing here needs a runtime module.
"""

from __future__ import annotations

import hmac
import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

MIN_TOKEN_CHARS = 16


class AuthConfig(BaseModel):
    """Set `token_env` (preferred: the token never sits in a config file) or `token`."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr | None = None
    token_env: str | None = Field(None, description="environment variable holding the token, read by the ingress")

    @model_validator(mode="after")
    def _one_source(self) -> AuthConfig:
        if self.token is not None and self.token_env is not None:
            raise ValueError("auth: set either 'token' or 'token_env', not both")
        return self

    @property
    def configured(self) -> bool:
        """Whether a token is set up (from the environment or the file)."""
        return self.token is not None or self.token_env is not None

    def secret(self) -> str | None:
        """The token (read from `token_env` now), or None when auth is off."""
        if self.token_env is not None:
            value = os.environ.get(self.token_env)
            if not value:
                raise ValueError(f"auth: environment variable {self.token_env} is empty or unset")
            return _long_enough(value)
        if self.token is not None:
            return _long_enough(self.token.get_secret_value())
        return None

    def resolve(self) -> BearerAuth | None:
        token = self.secret()
        return None if token is None else BearerAuth(token)


def _long_enough(token: str) -> str:
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"auth: the token must be at least {MIN_TOKEN_CHARS} characters")
    return token


class BearerAuth:
    def __init__(self, token: str) -> None:
        self._token = _long_enough(token).encode()

    def check(self, authorization: str | None) -> bool:
        """True for `Bearer <token>`; the comparison takes the same time whatever the input."""
        scheme, _, presented = (authorization or "").partition(" ")
        ok_scheme = scheme.lower() == "bearer"
        return hmac.compare_digest(presented.strip().encode(), self._token) and ok_scheme
