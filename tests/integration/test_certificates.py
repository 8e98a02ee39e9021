"""Certificates for the name viewers really use (docs/deployment.md, Certificates):
``gen-cert --hostname H --san ...`` and a key and certificate issued by the
hospital's CA. A real TLS client connects to 127.0.0.1 and checks the proxy's
certificate against the name it was made for, trusting only the given CA file."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from harness import (
    ProxyProcess,
    TlsCert,
    child_env,
    model_proxy_argv,
    start_proxy,
)

HOSTNAME = "proxy.hospital.example"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*model_proxy_argv(), *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


@contextmanager
def proxy_with(tmp_path: Path, cert: TlsCert) -> Iterator[ProxyProcess]:
    proxy = start_proxy(tmp_path / "proxy", {}, {}, cert=cert)
    try:
        yield proxy
    finally:
        proxy.stop()


def health_by_name(proxy: ProxyProcess, server_hostname: str, ca_file: Path) -> bytes:
    """GET /health over TLS to 127.0.0.1, verifying the certificate for ``server_hostname``."""
    address = urlsplit(proxy.url)
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((address.hostname, address.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(
            f"GET /health HTTP/1.1\r\nHost: {server_hostname}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


def san_values(cert_file: Path) -> tuple[str, list[str], list[str]]:
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        certificate.subject.rfc4514_string(),
        names.get_values_for_type(x509.DNSName),
        [str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
    )


def test_gen_cert_for_a_hostname_carries_its_sans(tmp_path: Path) -> None:
    done = run_cli(
        "gen-cert", "--out-dir", str(tmp_path), "--hostname", HOSTNAME,
        "--san", "DNS:proxy,IP:10.20.30.40", "--san", "IP:fd00::5,DNS:proxy", "--days", "30",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"CN={HOSTNAME}" in done.stdout and "valid 30 days" in done.stdout
    subject, dns, ips = san_values(tmp_path / "zhiva.crt")
    assert subject == f"CN={HOSTNAME}"
    assert dns == [HOSTNAME, "proxy"]  # the hostname first, no repeats
    assert ips == ["10.20.30.40", str(ipaddress.ip_address("fd00::5"))]
    certificate = x509.load_pem_x509_certificate((tmp_path / "zhiva.crt").read_bytes())
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    assert os.stat(tmp_path / "zhiva.key").st_mode & 0o077 == 0


def test_a_tls_client_verifies_the_proxy_by_its_hostname(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    done = run_cli(
        "gen-cert", "--out-dir", str(out), "--hostname", HOSTNAME, "--san", "IP:127.0.0.1",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cert = TlsCert(out / "zhiva.crt", out / "zhiva.key")
    with proxy_with(tmp_path, cert) as proxy:
        assert health_by_name(proxy, HOSTNAME, cert.cert).startswith(b"HTTP/1.1 200")
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            health_by_name(proxy, "other.hospital.example", cert.cert)
        # Without --hostname the certificate is for localhost only, as before.
        default = tmp_path / "default"
        assert run_cli("gen-cert", "--out-dir", str(default), cwd=tmp_path).returncode == 0
        with pytest.raises(ssl.SSLCertVerificationError):
            health_by_name(proxy, HOSTNAME, default / "zhiva.crt")


@dataclass(frozen=True)
class CaIssued(TlsCert):
    """A certificate the harness checks against the CA that issued it."""

    ca: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def sign(csr: str, ca: str, out: str, cwd: Path) -> None:
    run_openssl(
        "x509", "-req", "-in", csr, "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "30", "-copy_extensions", "copy", "-out", out,
        cwd=cwd,
    )  # fmt: skip


def test_a_certificate_from_the_hospital_ca_is_served_with_its_chain(tmp_path: Path) -> None:
    """The recipe of docs/deployment.md: a key and a CSR made with openssl, signed by the
    hospital's intermediate CA; zhiva.crt holds the certificate then the intermediate,
    and clients trust the hospital's root CA only."""
    run_openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        "-keyout", "root.key", "-out", "root.crt", "-subj", "/CN=Hospital Test Root CA",
        cwd=tmp_path,
    )  # fmt: skip
    run_openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "issuing.key",
        "-out", "issuing.csr", "-subj", "/CN=Hospital Test Issuing CA",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=tmp_path,
    )  # fmt: skip
    sign("issuing.csr", "root", "issuing.crt", tmp_path)
    # The two commands of the guide: a key and a request, then the CA's answer.
    run_openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "zhiva.key",
        "-out", "proxy.csr", "-subj", f"/CN={HOSTNAME}",
        "-addext", f"subjectAltName=DNS:{HOSTNAME},IP:10.20.30.40,IP:127.0.0.1",
        "-addext", "extendedKeyUsage=serverAuth",
        cwd=tmp_path,
    )  # fmt: skip
    sign("proxy.csr", "issuing", "proxy.crt", tmp_path)
    _, dns, ips = san_values(tmp_path / "proxy.crt")
    assert dns == [HOSTNAME] and ips == ["10.20.30.40", "127.0.0.1"]
    chain = (tmp_path / "proxy.crt").read_text() + (tmp_path / "issuing.crt").read_text()
    (tmp_path / "zhiva.crt").write_text(chain)
    cert = CaIssued(tmp_path / "zhiva.crt", tmp_path / "zhiva.key", ca=tmp_path / "root.crt")
    with proxy_with(tmp_path, cert) as proxy:
        assert health_by_name(proxy, HOSTNAME, tmp_path / "root.crt").startswith(b"HTTP/1.1 200")
        with pytest.raises(ssl.SSLCertVerificationError):
            health_by_name(proxy, HOSTNAME, tmp_path / "issuing.crt")  # not a root: no anchor


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--hostname", "bad host"], "'bad host' is not a DNS name or an IP address"),
        (["--san", "DNS:ok,URI:x"], "'URI:x': expected DNS:<name> or IP:<address>"),
        (["--san", "IP:999.1.1.1"], "'999.1.1.1' is not an IP address"),
        (["--san", "DNS:10.0.0.1"], "an address goes in as IP:10.0.0.1"),
        (["--days", "0"], "--days must be a whole number from 1 to 3650"),
    ],
)
def test_a_bad_name_is_one_clear_line_and_no_files(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    done = run_cli("gen-cert", "--out-dir", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert done.returncode == 2
    assert fragment in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
