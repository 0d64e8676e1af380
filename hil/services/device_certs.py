"""Device client certificates, issued by the test broker's per-run CA.

Why not ``trustme.CA.issue_cert(common_name=device_id)``: trustme puts the identities it
is given into a SubjectAlternativeName, and with none, cryptography 51 refuses to build
an empty one ("general_names must be a non-empty list"). trustme only knows host names,
IP addresses and e-mail addresses, and a device id is none of these (it may hold ``_``,
which no DNS name does). So the certificate is built here: the CN is the device id
(mosquitto's ``use_identity_as_username`` reads the CN, and the ACL is keyed on it) and
the SAN is a URI naming the device, ``urn:hil:device:<id>`` (percent-encoded), the form
an X.509 identity that is not a host takes. Every cryptography the project allows
accepts it.
"""

from __future__ import annotations

import datetime
import urllib.parse
from dataclasses import dataclass

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)
"""Long enough for any run; the CA itself lives only as long as the run."""


@dataclass(frozen=True)
class DeviceCertificate:
    """A device's client certificate and its private key, both PEM."""

    chain_pem: str
    key_pem: str


def device_uri(device_id: str) -> str:
    """The SAN URI that names a device: ``urn:hil:device:<percent-encoded id>``."""
    return f"urn:hil:device:{urllib.parse.quote(device_id, safe='')}"


def issue_device_certificate(ca: trustme.CA, device_id: str) -> DeviceCertificate:
    """A client certificate for ``device_id`` signed by ``ca`` (ECDSA P-256, as the C3's
    mbedTLS handles fastest): CN = the id, SAN = its URI, usable for TLS client auth only."""
    if not device_id:
        raise ValueError("a device certificate needs a non-empty device id")
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):  # trustme's default CA key type
        raise TypeError(f"the CA's key is a {type(ca_key).__name__}, expected an EC key")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # host clocks differ a little
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(device_uri(device_id))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    # The leaf alone, as trustme's chain for a root-signed certificate is: the peer has the CA.
    chain = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return DeviceCertificate(chain_pem=chain.decode(), key_pem=key_pem.decode())
