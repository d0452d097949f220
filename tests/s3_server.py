"""A real S3-compatible server for tests: moto's standalone server on a free loopback port.

Tests talk to it over HTTP exactly as they would to MinIO or AWS, so the S3 backend's real client code
(signing, ranges, multipart, listing) runs. moto does not check signatures, so any credentials work.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer


@contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 (an OS-chosen free port), yield its endpoint URL, stop it on exit."""
    # werkzeug logs every request to stderr; tests only want to hear about failures.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Port 0: the OS picks a free port at bind time, so there is no probe-then-bind race with other tests.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def create_bucket(endpoint_url: str, bucket: str, region: str = "us-east-1") -> None:
    """Create `bucket` with a plain (unsigned) CreateBucket PUT; an existing bucket of ours is fine."""
    body = None
    if region != "us-east-1":
        body = (
            '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
        ).encode()
    request = urllib.request.Request(f"{endpoint_url.rstrip('/')}/{bucket}", data=body, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        if error.code == 409 and "BucketAlreadyOwnedByYou" in text:
            return
        raise RuntimeError(f"CreateBucket {bucket!r} at {endpoint_url} failed: {error.code} {text}") from error
