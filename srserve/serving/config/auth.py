"""Optional bearer-token authentication shared by the HTTP and gRPC APIs: the config and its resolved check.

The check lives beside its config because resolving the config yields it: the ingress calls
`AuthConfig.resolve()` and holds the result, and nothing here needs a runtime module.
"""

from __future__ import annotations

import hmac
import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


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

    def resolve(self) -> BearerAuth | None:
        if self.token_env is not None:
            value = os.environ.get(self.token_env)
            if not value:
                raise ValueError(f"auth: environment variable {self.token_env} is empty or unset")
            return BearerAuth(value)
        if self.token is not None:
            return BearerAuth(self.token.get_secret_value())
        return None


class BearerAuth:
    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise ValueError("auth: the token must be at least 16 characters")
        self._token = token.encode()

    def check(self, authorization: str | None) -> bool:
        """True for `Bearer <token>`; the comparison takes the same time whatever the input."""
        scheme, _, presented = (authorization or "").partition(" ")
        ok_scheme = scheme.lower() == "bearer"
        return hmac.compare_digest(presented.strip().encode(), self._token) and ok_scheme
