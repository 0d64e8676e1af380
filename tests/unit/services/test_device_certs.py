"""Device client certificates: built on every cryptography the project allows (51 refused
trustme's empty SAN), named by CN and a URI SAN, and accepted by mosquitto for mutual TLS."""

from __future__ import annotations

import shutil
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil.services.broker import MosquittoBroker
from hil.services.device_certs import device_uri, issue_device_certificate


@pytest.mark.parametrize("device_id", ["bench-1", "dev_1", "Ünïcode-ε", "a.b"])
def test_certificate_names_the_device_by_cn_and_uri(device_id: str) -> None:
    ca = trustme.CA()
    issued = issue_device_certificate(ca, device_id)
    cert = x509.load_pem_x509_certificate(issued.chain_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [device_uri(device_id)]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    cert.verify_directly_issued_by(ca_cert)  # raises when another key signed it


def test_uri_escapes_what_a_uri_cannot_hold() -> None:
    assert device_uri("bench-1") == "urn:hil:device:bench-1"
    assert device_uri("a b/c") == "urn:hil:device:a%20b%2Fc"


def test_certificate_refuses_an_empty_id() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        issue_device_certificate(trustme.CA(), "")


def test_key_matches_the_certificate() -> None:
    from cryptography.hazmat.primitives import serialization

    issued = issue_device_certificate(trustme.CA(), "bench-1")
    key = serialization.load_pem_private_key(issued.key_pem.encode(), password=None)
    cert = x509.load_pem_x509_certificate(issued.chain_pem.encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


@pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                    reason="mosquitto is not installed (setup.sh installs it)")
def test_mosquitto_accepts_the_certificate_for_mutual_tls(tmp_path: Path) -> None:
    """A full mTLS handshake with mosquitto: it verifies the chain, takes the CN as the
    user name, and its ACL then lets the device use its own topics."""
    broker = MosquittoBroker(tmp_path / "broker")
    creds = broker.add_device("dev_1")
    (tmp_path / "cert.pem").write_text(creds.client_cert_pem)
    (tmp_path / "key.pem").write_text(creds.client_key_pem.reveal())
    (tmp_path / "ca.pem").write_text(broker.ca_pem)
    received = threading.Event()
    connected: list[object] = []
    with broker:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev_1")
        client.tls_set(ca_certs=str(tmp_path / "ca.pem"), certfile=str(tmp_path / "cert.pem"),
                       keyfile=str(tmp_path / "key.pem"), cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = lambda c, u, f, rc, p: (connected.append(rc), c.subscribe("esp32/dev_1/sensors", qos=1))
        client.on_subscribe = lambda c, u, mid, rcs, p: c.publish("esp32/dev_1/sensors", b"{}", qos=1)
        client.on_message = lambda c, u, msg: received.set()
        assert broker.mtls_port is not None
        client.connect("127.0.0.1", broker.mtls_port, keepalive=15)
        client.loop_start()
        try:
            assert received.wait(10), f"no message back through the mTLS session (connect: {connected})"
        finally:
            client.loop_stop()
            client.disconnect()
    assert [str(rc) for rc in connected] == ["Success"]
