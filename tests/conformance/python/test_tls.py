"""wss://: `parlor serve --tls-cert/--tls-key` with a certificate from a private CA, and the
real Python SDK trusting that CA through the standard SSL_CERT_FILE (as a user with a private
CA would): welcome, subscribe, publish round trip. A client without the CA fails to connect."""

from __future__ import annotations

import asyncio
import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import ipaddress

from conftest import WAIT, connect

from metered_realtime import Message


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Parlor test CA"))
          .issuer_name(_name("Parlor test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert, keyf = d / "ca.pem", d / "server.pem", d / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return ca_pem, cert, keyf


async def test_python_sdk_over_wss_with_a_private_ca(tmp_path, parlor_factory, make_client,
                                                     monkeypatch):
    ca_pem, cert, keyf = make_pki(tmp_path)
    config = f'[tls]\ncert_file = "{cert}"\nkey_file = "{keyf}"\n'
    srv = parlor_factory(config)
    assert any(line.startswith("listening on wss://") for line in srv.stdout_lines), \
        srv.stdout_lines
    url = f"wss://localhost:{srv.port}"

    # Without the CA: the SDK's connect fails (certificate verify failed).
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "empty.pem"))
    (tmp_path / "empty.pem").write_text("")
    bad = make_client(url, name="untrusting")
    with pytest.raises(Exception):
        await asyncio.wait_for(bad.sc.connect(), WAIT)

    # Trusting the CA through the standard OpenSSL variable.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    a = await connect(make_client, url, name="a")
    b = await connect(make_client, url, name="b")
    await asyncio.wait_for(a.sc.subscribe("tls-room"), WAIT)
    await asyncio.wait_for(b.sc.subscribe("tls-room"), WAIT)
    await asyncio.wait_for(a.sc.publish("tls-room", {"over": "tls"}), WAIT)
    msg = await b.rec.wait_for(Message)
    assert msg.data == {"over": "tls"}
