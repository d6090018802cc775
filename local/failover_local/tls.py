"""Throwaway PKI for the EM simulator: a fresh CA and a loopback server certificate.

Clients trust the simulator through ``TestPki.ca_bundle``, never by turning verification
off. Each call makes an unrelated CA, so calling it twice gives an untrusted PKI for
tests that expect verification to fail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = timedelta(days=7)
_BACKDATE = timedelta(hours=1)


@dataclass(frozen=True)
class TestPki:
    """PEM files of one throwaway PKI.

    ``ca_bundle`` is what a client verifies against; ``certificate`` and ``private_key``
    are what the server presents.
    """

    __test__ = False  # keeps pytest from collecting this as a test class

    ca_bundle: Path
    certificate: Path
    private_key: Path


def make_test_pki(directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TestPki:
    """Write a new self-signed CA and a server certificate for ``hosts`` into ``directory``.

    Hosts that parse as IP addresses become IPAddress SANs, the rest DNSName SANs. The
    certificate is valid from an hour ago for seven days. Files are named ``ca.pem``,
    ``server.pem`` and ``server-key.pem``; existing ones are overwritten.
    """
    if not hosts:
        raise ValueError("make_test_pki needs at least one host")

    directory.mkdir(parents=True, exist_ok=True)
    not_before = datetime.now(UTC) - _BACKDATE
    not_after = not_before + _BACKDATE + _VALIDITY

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Failover Notifier Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, "EM Simulator Test CA"),
        ]
    )
    ca_cert = _build_ca(ca_key, name=ca_name, not_before=not_before, not_after=not_after)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _build_server(
        server_key,
        ca_key=ca_key,
        ca_name=ca_name,
        hosts=hosts,
        not_before=not_before,
        not_after=not_after,
    )

    pki = TestPki(
        ca_bundle=directory / "ca.pem",
        certificate=directory / "server.pem",
        private_key=directory / "server-key.pem",
    )
    pki.ca_bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.certificate.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.private_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pki.private_key.chmod(0o600)
    return pki


def _build_ca(
    key: ec.EllipticCurvePrivateKey,
    *,
    name: x509.Name,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _build_server(
    key: ec.EllipticCurvePrivateKey,
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    hosts: Sequence[str],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names
