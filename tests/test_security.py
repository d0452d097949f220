"""Bearer-token auth on both APIs and TLS for gRPC, on a second app of the session's cluster."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import openai
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from srserve.client import GenerationFailed, SrserveClient
from srserve.client.grpc_client import make_request
from srserve.serving.config import AuthConfig, BearerAuth
from tests.conftest import _free_port

TOKEN = "s3cret-token-for-tests-0123456789"


def test_bearer_check_and_config_errors(monkeypatch) -> None:
    auth = BearerAuth(TOKEN)
    assert auth.check(f"Bearer {TOKEN}") and auth.check(f"bearer {TOKEN}")
    for bad in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
        assert not auth.check(bad)
    with pytest.raises(ValueError, match="at least 16"):
        BearerAuth("short")
    with pytest.raises(ValueError, match="either 'token' or 'token_env'"):
        AuthConfig(token=TOKEN, token_env="X")
    monkeypatch.delenv("SRSERVE_TEST_TOKEN", raising=False)
    with pytest.raises(ValueError, match="SRSERVE_TEST_TOKEN is empty or unset"):
        AuthConfig(token_env="SRSERVE_TEST_TOKEN").resolve()
    monkeypatch.setenv("SRSERVE_TEST_TOKEN", TOKEN)
    assert AuthConfig(token_env="SRSERVE_TEST_TOKEN").resolve().check(f"Bearer {TOKEN}")


def _self_signed(tmp_path) -> tuple[str, str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), pem


@pytest.fixture(scope="module")
def secure(serving, tiny_config, tmp_path_factory):
    from ray import serve

    from srserve.serving.app import build_app
    from srserve.serving.config import GrpcTlsConfig, PoolConfig, ServingConfig

    cert, key, pem = _self_signed(tmp_path_factory.mktemp("tls"))
    port = _free_port()
    config = ServingConfig(
        app_name="secure",
        model=tiny_config.model_copy(update={"num_threads": 1}),
        sketch_pool=PoolConfig(ray_actor_options={"num_cpus": 0.25}),
        render_pool=PoolConfig(ray_actor_options={"num_cpus": 0.25}),
        auth={"token": TOKEN},
        grpc_tls=GrpcTlsConfig(port=port, cert_file=cert, key_file=key, upstream=serving.grpc),
    )
    serve.run(build_app(config), name="secure", route_prefix="/secure")
    yield {"http": serving.http + "/secure", "tls_target": f"localhost:{port}", "ca": pem, "plain_grpc": serving.grpc}
    serve.delete("secure")


@pytest.mark.slow
def test_http_needs_the_token(secure) -> None:
    base = secure["http"]
    r = requests.post(base + "/v1/videos", json={"prompt": "x"}, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthenticated"
    r = requests.get(base + "/v1/videos", headers={"authorization": "Bearer wrong-token-wrong-token"}, timeout=30)
    assert r.status_code == 401
    assert requests.get(base + "/health", timeout=30).status_code == 200  # probes stay open
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0).videos.list()
    client = openai.OpenAI(base_url=base + "/v1", api_key=TOKEN, max_retries=0)
    video = client.videos.create_and_poll(
        prompt="authorised", extra_body={"num_inference_steps": 3}, poll_interval_ms=100
    )
    assert video.status == "completed"
    assert client.videos.download_content(video.id).read()[4:8] == b"ftyp"


@pytest.mark.slow
def test_grpc_over_tls_needs_the_token(secure) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=secure["ca"])
    with SrserveClient(secure["tls_target"], "secure", credentials=credentials) as anonymous:
        with pytest.raises(GenerationFailed) as info:
            anonymous.submit(make_request("x", num_inference_steps=2))
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with SrserveClient(secure["tls_target"], "secure", credentials=credentials, token=TOKEN) as client:
        video = client.generate(make_request("over tls", num_inference_steps=3, switch="fixed:1"))
        assert video.job.state == "completed" and video.mp4[4:8] == b"ftyp"
        assert client.get_job(video.job.id).id == video.job.id
    with SrserveClient(secure["tls_target"], "secure", token=TOKEN, timeout_s=5) as plaintext:
        with pytest.raises(GenerationFailed) as info:
            plaintext.list_jobs()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE  # no plaintext on the TLS port


def test_saved_videos_stay_in_their_directory(tmp_path) -> None:
    from srserve.client.grpc_client import video_path

    good = video_path(tmp_path, "video_" + "ab" * 16, prefix="grpc-")
    assert good.parent == tmp_path.resolve() and good.name.startswith("grpc-video_")
    for evil in ("../../etc/passwd", "video_../../x", "/tmp/x", "video_" + "ab" * 16 + "/../../y", ""):
        with pytest.raises(ValueError):
            video_path(tmp_path, evil)
