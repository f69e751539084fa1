"""DICOM TLS: DCMTK's ``storescu +tls`` against certificates the test makes; plain and
TLS on separate ports; with ``--tls-ca`` a client without a certificate signed by that
CA is refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest

from tests.dicomnode.harness import ct_series, echo, storescu, wait_until


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, signed by it."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    paths: dict[str, Path] = {}

    def save(name: str, key, cert) -> None:
        paths[f"{name}.key"] = folder / f"{name}.key"
        paths[f"{name}.pem"] = folder / f"{name}.pem"
        paths[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        paths[f"{name}.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def name(cn: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("edgemed test CA"))
        .issuer_name(name("edgemed test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    save("ca", ca_key, ca)
    for who, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(f"edgemed test {who}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if who == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        save(who, key, builder.sign(ca_key, hashes.SHA256()))
    return paths


def test_tls_port_with_client_certificates(tmp_path, listen):
    certs = _certificates(tmp_path)
    node = listen(
        "--stable-seconds", "0.5",
        "--tls-cert", str(certs["server.pem"]),
        "--tls-key", str(certs["server.key"]),
        "--tls-ca", str(certs["ca.pem"]),
        "--tls-port", "0",
    )  # fmt: skip
    assert node.tls_port and node.tls_port != node.port
    tls = ["+tls", str(certs["client.key"]), str(certs["client.pem"]), "+cf", str(certs["ca.pem"])]
    files = ct_series(tmp_path / "ct", 3)
    sent = storescu(node.tls_port, files, extra=tls)
    assert sent.returncode == 0, sent.stderr
    series = node.wait_settled(1)
    assert (series[0]["instances"], series[0]["state"]) == (3, "done")
    # Plain C-ECHO on the plain port; plain TCP on the TLS port does not get through.
    assert echo(node.port)
    assert not echo(node.tls_port)
    # A TLS client without a certificate from the CA is refused.
    anonymous = storescu(
        node.tls_port, ct_series(tmp_path / "anon", 2), extra=["+tla", "+cf", str(certs["ca.pem"])]
    )
    assert anonymous.returncode != 0
    # TLS to the plain port fails too; the node goes on serving.
    assert storescu(node.port, files[:1], extra=tls).returncode != 0
    assert echo(node.port, extra=tls[:0]) and echo(node.tls_port, extra=tls)
    assert len(node.listing()["series"]) == 1
    wait_until(lambda: echo(node.port), "C-ECHO after the refused clients")
