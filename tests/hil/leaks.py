"""Where a secret shows (DEVICE_CONTRACT.md §1: passwords and private keys never on the
serial port, in MQTT payloads or in logs), for any test that provokes a path a secret could
leak on: the happy ones (a boot, a command) and the failure ones (a wrong Wi-Fi passphrase,
a refused TLS handshake), where a debugging print is most likely left in.

    assert leaked(secret_texts(prov), console.lines(since), mqtt.collect("#", since=mark)) == []
"""

from __future__ import annotations

from typing import Any

from hil.secret import Secret


def secret_texts(*provisionings: Any, access: Any = None) -> dict[Secret, str]:
    """Every secret (§1: wifi_pass, mqtt_pass, client_key) of these provisionings and of
    the broker access, as the texts a leak would show (text -> what it is): a password
    whole, a private key whole and each line of its PEM body (a log line may carry one).
    Each text stays a `Secret`, so a failure shown with ``pytest -l`` does not print it."""
    values: list[tuple[str, Secret | None]] = []
    for prov in provisionings:
        values += [("wifi_pass", prov.wifi_pass), ("mqtt_pass", prov.mqtt_pass), ("client_key", prov.client_key)]
    if access is not None:
        values += [("mqtt_pass", access.password), ("client_key", access.client_key)]
    texts: dict[Secret, str] = {}
    for name, value in values:
        if not value:
            continue
        texts.setdefault(value, name)
        if "-----BEGIN" in value.reveal():
            for n, line in enumerate(value.reveal().splitlines()):
                if line.strip() and not line.startswith("-----"):
                    texts.setdefault(Secret(line.strip()), f"{name} (PEM line {n})")
    return texts


def leaked(secrets: dict[Secret, str], serial: list[str], payloads: list[Any]) -> list[str]:
    """Where each secret shows (the secret itself masked): on the serial port, or on
    which topic."""
    found = []
    for held, name in secrets.items():
        secret = held.reveal()
        found += [f"{name} on the serial port: {line.replace(secret, '<' + name + '>')[:160]!r}" for line in serial if secret in line][:1]
        found += [f"{name} in a message on {m.topic}" for m in payloads if secret.encode() in m.payload][:1]
    return found
