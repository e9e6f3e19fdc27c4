"""Certificates made at test time (cryptography): a CA, server certificates for given DNS names,
client certificates. PEM bytes, ready for a kubernetes.io/tls Secret or a gRPC server."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, name: str = "test-ca") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        builder = self._build(_name(name), self._key.public_key(), ca=True)
        self._cert = builder.sign(self._key, hashes.SHA256())
        self.pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def _build(self, subject: x509.Name, public_key, *, ca: bool) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        issuer = subject if ca else self._cert.subject
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    def _issue(self, cn: str, usage, dns_names: tuple[str, ...] = ()) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._build(_name(cn), key.public_key(), ca=False).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False)
        if dns_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def server(self, *dns_names: str) -> Pem:
        """A server certificate naming only these DNS names (no IP: pods are dialled by IP and
        their certificates name the Service)."""
        # The names are in the SAN; a CN holds at most 64 characters and clients ignore it.
        return self._issue("server", ExtendedKeyUsageOID.SERVER_AUTH, dns_names)

    def client(self, cn: str) -> Pem:
        return self._issue(cn, ExtendedKeyUsageOID.CLIENT_AUTH)
