"""``model-proxy gen-cert``: a self-signed certificate like the original's setup makes.

The original runs ``openssl req -x509 -nodes -days 365 -newkey rsa:2048`` for
``CN=localhost``; this adds the SANs browsers and httpx require (a bare CN is
no longer checked) and keeps CA:TRUE as openssl does, so the certificate file
itself can be given to clients as their trust anchor.

For the host name viewers really use, ``--hostname`` sets the CN and the first
SAN, and ``--san`` adds more names and addresses::

    model-proxy gen-cert --hostname proxy.hospital.local --san DNS:proxy,IP:10.0.0.5
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_NAME = "zhiva.crt"
KEY_NAME = "zhiva.key"
DEFAULT_HOSTNAME = "localhost"

# RFC 1123 labels; a leading "*." is allowed for a wildcard name.
_DNS_NAME = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)

SubjectName = x509.DNSName | x509.IPAddress


class BadName(ValueError):
    """A --hostname or --san entry that cannot go into a certificate; says which."""


def parse_hostname(value: str) -> SubjectName:
    """A host name as a DNS SAN, or an IP address as an IP SAN."""
    value = value.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) > 253 or not _DNS_NAME.fullmatch(value):
        raise BadName(f"{value!r} is not a DNS name or an IP address")
    return x509.DNSName(value.rstrip(".").lower())


def parse_sans(values: Iterable[str]) -> list[SubjectName]:
    """``DNS:name`` and ``IP:address`` entries, comma-separated, as openssl writes them."""
    names: list[SubjectName] = []
    for value in values:
        for entry in filter(None, (part.strip() for part in value.split(","))):
            kind, _, name = entry.partition(":")
            if kind.upper() == "DNS" and name:
                parsed = parse_hostname(name)
                if isinstance(parsed, x509.IPAddress):
                    raise BadName(f"{entry!r}: an address goes in as IP:{name}")
                names.append(parsed)
            elif kind.upper() == "IP" and name:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    raise BadName(f"{entry!r}: {name!r} is not an IP address") from None
            else:
                raise BadName(f"{entry!r}: expected DNS:<name> or IP:<address>")
    return names


def subject_names(hostname: str | None, sans: Sequence[str]) -> tuple[str, list[SubjectName]]:
    """The CN and the SAN list: the hostname first, then ``--san``, without repeats.

    Without a hostname the certificate is for localhost, 127.0.0.1 and ::1 as before.
    """
    if hostname is None:
        names: list[SubjectName] = [
            x509.DNSName(DEFAULT_HOSTNAME),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        common_name = DEFAULT_HOSTNAME
    else:
        first = parse_hostname(hostname)
        names = [first]
        common_name = str(first.value)
    for name in parse_sans(sans):
        if name not in names:
            names.append(name)
    return common_name, names


def generate_self_signed(
    out_dir: Path,
    *,
    days: int = 365,
    hostname: str | None = None,
    sans: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``zhiva.crt`` and ``zhiva.key`` (mode 0600) into ``out_dir``.

    Raises :class:`BadName` before writing anything when a name is malformed.
    """
    common_name, names = subject_names(hostname, sans)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = out_dir / CERT_NAME, out_dir / KEY_NAME
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_bytes)
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def describe(names: Iterable[SubjectName]) -> str:
    """``DNS:proxy.hospital.local, IP:10.0.0.5`` for the command's output."""
    return ", ".join(
        f"{'IP' if isinstance(name, x509.IPAddress) else 'DNS'}:{name.value}" for name in names
    )
