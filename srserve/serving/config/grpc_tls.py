"""The gRPC TLS gateway's config (the gateway itself: srserve.serving.api.tls_gateway)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GrpcTlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: int = Field(9443, ge=1, le=65535)
    cert_file: str = Field(description="PEM certificate chain")
    key_file: str = Field(description="PEM private key")
    upstream: str = Field("127.0.0.1:9000", description="Serve's gRPC proxy on the gateway's node")
