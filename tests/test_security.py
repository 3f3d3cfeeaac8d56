"""TLS, mutual TLS and the admin token, with certificates made at test time."""
import datetime
import ipaddress

import grpc
import numpy as np
import pytest

from memserve_client import Client, MemserveError

from models import ROOT

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

EXAMPLE = ROOT / "examples" / "mlp.onnx"


def _cert(name, key, issuer_name, issuer_key, ca=False, ip=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "memserve test CA")])
    ca = _cert("memserve test CA", ca_key, ca_name, ca_key, ca=True)
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for who, ip in (("server", "127.0.0.1"), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{who}.pem"] = _cert(who, key, ca_name, ca_key, ip=ip).public_bytes(serialization.Encoding.PEM)
        files[f"{who}.key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d, files


def works(c: Client) -> bool:
    m = c.load(EXAMPLE, name="secure")
    ok = c.execute(m, {"x": np.ones((1, 64), np.float32)})["probs"].shape == (1, 10)
    c.unload(m)
    return ok


def refused(c: Client) -> grpc.StatusCode:
    with pytest.raises(MemserveError) as e:
        c.list_models()
    return e.value.code


def test_tls_serves_tls_and_refuses_plaintext(make_daemon, pki):
    d, f = pki
    daemon = make_daemon("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"))
    with Client(daemon.target, tls_ca=f["ca.pem"], timeout=10) as c:
        assert works(c)
    with Client(daemon.target, timeout=5) as plain:
        assert refused(plain) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_without_a_certificate(make_daemon, pki):
    d, f = pki
    daemon = make_daemon("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"),
                         "--tls-client-ca", str(d / "ca.pem"))
    with Client(daemon.target, tls_ca=f["ca.pem"], tls_cert=f["client.pem"], tls_key=f["client.key"], timeout=10) as c:
        assert works(c)
    with Client(daemon.target, tls_ca=f["ca.pem"], timeout=5) as anonymous:
        assert refused(anonymous) == grpc.StatusCode.UNAVAILABLE


def test_admin_token_guards_admin_calls_and_optionally_execute(make_daemon, tmp_path):
    token = "s3cret-token-value"
    (tmp_path / "token").write_text(token + "\n")
    daemon = make_daemon("--admin-token-file", str(tmp_path / "token"))
    x = {"x": np.ones((1, 64), np.float32)}
    with Client(daemon.target, token=token) as admin, Client(daemon.target) as anyone, \
            Client(daemon.target, token="wrong") as wrong:
        for c, why in ((anyone, "missing authorization"), (wrong, "does not match")):
            with pytest.raises(MemserveError) as e:
                c.load(EXAMPLE, name="m")
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and why in e.value.message
        m = admin.load(EXAMPLE, name="m")
        assert anyone.execute(m, x)["probs"].shape == (1, 10)  # execution stays open
        with pytest.raises(MemserveError) as e:
            anyone.unload(m)
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        admin.unload(m)
    guarded = make_daemon("--admin-token-file", str(tmp_path / "token"), "--require-token-for-execute")
    with Client(guarded.target, token=token) as admin, Client(guarded.target) as anyone:
        m = admin.load(EXAMPLE, name="m")
        with pytest.raises(MemserveError) as e:
            anyone.execute(m, x)
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert admin.execute(m, x)["probs"].shape == (1, 10)
    assert token not in daemon.stop() + guarded.stop()  # never logged


def test_cli_speaks_tls_with_a_token(make_daemon, pki, tmp_path):
    import subprocess
    import sys

    d, f = pki
    (tmp_path / "token").write_text("cli-token")
    daemon = make_daemon("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"),
                         "--admin-token-file", str(tmp_path / "token"))
    base = [sys.executable, "-m", "memserve_client.cli", "--target", daemon.target, "--tls-ca", str(d / "ca.pem")]
    r = subprocess.run(base + ["--token-file", str(tmp_path / "token"), "load", str(EXAMPLE), "--name", "c"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + ["unload", "c"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
