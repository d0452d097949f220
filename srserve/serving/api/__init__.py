"""The public APIs: OpenAI-style HTTP, srserve.v1 gRPC, auth, errors and the gRPC TLS gateway."""
