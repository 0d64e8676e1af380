"""Secret redaction and report metadata."""

from __future__ import annotations

import json
from pathlib import Path

import trustme
from hypothesis import given
from hypothesis import strategies as st

from hil.report import REDACTED, Redactor, redact_tree, write_results_metadata

KEY = trustme.CA().issue_cert("dev1").private_key_pem.bytes().decode()


def test_known_secrets_and_secret_shapes_are_removed() -> None:
    redact = Redactor(["hunter2-wifi", KEY])
    text = (
        f"I (12) wifi: credentials ssid=lab password=hunter2-wifi\n"
        f"{json.dumps({'client_key': KEY})}\n"
        "mqtt_pass=s3cr3tvalue token: abcdef123456 Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x.y\n"
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n"
    )
    clean = redact(text)
    for secret in ("hunter2-wifi", "s3cr3tvalue", "abcdef123456", "eyJhbGciOiJIUzI1NiJ9", "MHcCAQEE", "PRIVATE KEY-----\\nMI"):
        assert secret not in clean, secret
    assert KEY.splitlines()[1] not in clean
    assert clean.count(REDACTED) >= 5
    assert "ssid=lab" in clean  # ordinary text stays


@given(st.text(min_size=4, max_size=40).filter(lambda s: s.strip() == s and s))
def test_any_registered_secret_never_survives(secret: str) -> None:
    assert secret not in Redactor([secret])(f"before {secret} after {secret}")


def test_redact_tree_and_metadata(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("pass=topsecret1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text('{"wifi_pass": "topsecret1"}')
    assert redact_tree(tmp_path, Redactor(["topsecret1"])) == 2
    assert "topsecret1" not in (tmp_path / "sub" / "b.json").read_text()
    write_results_metadata(tmp_path / "allure", {"rig": "virtual-0", "firmware": "1.0.0\nx"})
    props = (tmp_path / "allure" / "environment.properties").read_text()
    assert "firmware=1.0.0\\nx" in props and "rig=virtual-0" in props
    categories = json.loads((tmp_path / "allure" / "categories.json").read_text())
    assert {c["matchedStatuses"][0] for c in categories} == {"broken", "failed"}
