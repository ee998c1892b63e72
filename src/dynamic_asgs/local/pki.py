"""A throwaway PKI: a CA and the server/client certificates it signs.

Tests, benchmarks and the local environment generate their certificates per run with
this module (never checked-in keys). Keys are ECDSA P-256 (cheap handshakes, which
matters when thousands of cells connect) and are written with mode 0600. Validity is
configurable so that tests can make certificates that are expired or not yet valid.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_HOSTS", "CertificateAuthority", "Issued", "Pki", "make_pki", "write_private_key"]

#: Names every local certificate is valid for (servers bind to loopback only).
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` as unencrypted PEM to ``path`` with mode 0600 (from creation on)."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True, slots=True)
class Issued:
    """Paths of an issued certificate, its key and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates into a directory."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, cert_path: Path) -> None:
        self.key = key
        self.cert = cert
        self.cert_path = cert_path

    @classmethod
    def create(
        cls, directory: str | Path, *, name: str = "dynamic-asgs local CA", prefix: str = "ca",
        valid_from: dt.datetime | None = None, valid_for: dt.timedelta = 365 * _DAY,
    ) -> CertificateAuthority:
        """Create a CA and write ``<prefix>.crt`` / ``<prefix>.key`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = valid_from or _now() - dt.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + valid_for)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_path = directory / f"{prefix}.crt"
        _write_cert(cert_path, cert)
        write_private_key(directory / f"{prefix}.key", key)
        return cls(key, cert, cert_path)

    def issue(
        self, directory: str | Path, name: str, *, hosts: Sequence[str] = DEFAULT_HOSTS,
        server: bool = True, client: bool = True,
        valid_from: dt.datetime | None = None, valid_for: dt.timedelta = 365 * _DAY,
    ) -> Issued:
        """Issue a leaf certificate ``<name>.crt`` / ``<name>.key`` for ``hosts``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        start = valid_from or _now() - dt.timedelta(minutes=5)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if hosts:
            builder = builder.add_extension(_alt_names(hosts), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        _write_cert(cert_path, cert)
        write_private_key(key_path, key)
        return Issued(cert=cert_path, key=key_path, ca=self.cert_path)


@dataclass(frozen=True, slots=True)
class Pki:
    """A CA with one server and one client certificate."""

    ca: CertificateAuthority
    server: Issued
    client: Issued


def make_pki(directory: str | Path, *, name: str = "dynamic-asgs", hosts: Sequence[str] = DEFAULT_HOSTS) -> Pki:
    """Create ``<name>-ca``, a ``<name>-server`` and a ``<name>-client`` certificate in ``directory``."""
    ca = CertificateAuthority.create(directory, name=f"{name} CA", prefix=f"{name}-ca")
    server = ca.issue(directory, f"{name}-server", hosts=hosts, client=False)
    client = ca.issue(directory, f"{name}-client", hosts=(), server=False)
    return Pki(ca=ca, server=server, client=client)
