"""Secret redaction and report metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from hil.reporting.report import (
    REDACTED,
    Redactor,
    attach_fault_timeline,
    fault_timeline_text,
    is_secret_name,
    redact_tree,
    write_results_metadata,
)

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


# -- known secrets by value ------------------------------------------------------------------
def test_a_pem_keys_body_alone_and_each_of_its_lines_are_redacted() -> None:
    redact = Redactor([KEY], environ={})
    lines = [line for line in KEY.splitlines() if not line.startswith("-----")]
    body = "".join(lines)
    clean = redact(f"body {body}\nfirst line {lines[0]}\nescaped {json.dumps(KEY)}")
    assert body not in clean and lines[0] not in clean
    assert "BEGIN" not in clean and clean.count(REDACTED) >= 3


def test_secret_named_environment_variables_are_redacted_by_value() -> None:
    token = "AKIAx9/Q+bare-token-with-no-shape-7f3e2d1c0b"
    environ = {
        "AWS_SECRET_ACCESS_KEY": token,
        "GITHUB_TOKEN": "ghp_0123456789abcdef",
        "HIL_BROKER_PASSWORD": "staging-pass-42",
        "HIL_BROKER_CLIENT_KEY_FILE": "/etc/hil/client.key",  # a path to a secret, not one
        "PWD": "/work/main",
        "CI_DEBUG_TOKEN": "1",  # too short to be a secret: a flag
        "HOME": "/root",
    }
    redact = Redactor(environ=environ)
    text = f"{token} ghp_0123456789abcdef staging-pass-42 /etc/hil/client.key /work/main /root 1"
    clean = redact(text)
    assert token not in clean and "ghp_" not in clean and "staging-pass-42" not in clean
    assert "/etc/hil/client.key /work/main /root 1" in clean
    assert Redactor(environ={})(token) == token  # {} turns it off


def test_the_default_environment_is_this_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIL_TEST_API_TOKEN", "qwertyuiop1234567890")
    assert Redactor()("x qwertyuiop1234567890 y") == f"x {REDACTED} y"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("AWS_SECRET_ACCESS_KEY", True), ("GITLAB_TOKEN", True), ("HIL_WIFI_PASSWORD", True),
        ("MY_API_KEY", True), ("DB_PASS", True), ("HIL_BROKER_PASSWORD_FILE", False),
        ("PWD", False), ("OLDPWD", False), ("PASSTHROUGH", False), ("TOKENIZERS_PARALLELISM", False),
    ],
)  # fmt: skip
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_redact_tree_sweeps_a_file_with_stray_bytes_and_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"\xff\xfe garbage then the secret topsecret1 and more \x80\n")
    assert redact_tree(tmp_path, Redactor(["topsecret1"], environ={})) == 1
    assert path.read_bytes() == b"\xff\xfe garbage then the secret [REDACTED] and more \x80\n"


# -- firmware hash -----------------------------------------------------------------------------
# -- fault timeline ----------------------------------------------------------------------------
def test_the_fault_timeline_is_attached_from_a_tests_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    import allure

    import hil.reporting.report
    from hil.services.netfault import FaultProxy

    attached: list[tuple[str, str, object]] = []
    # On the test's own page (hil.reporting.evidence), not the network fixture's teardown.
    monkeypatch.setattr(
        hil.reporting.report, "attach_to_test", lambda body, name, kind: attached.append((body, name, kind)) or True
    )
    with FaultProxy("127.0.0.1", 1, name="dev1-broker") as proxy:
        proxy.set_latency(0.5)
        since = len(proxy.timeline)  # what the network fixture takes as a test starts
        proxy.blackhole(True)
        proxy.partition(3.0)
        proxy.heal()
        text = attach_fault_timeline(proxy, since=since, redact=Redactor(["dev1-broker"], environ={}))
    [(body, name, kind)] = attached
    assert body == text and name == "fault timeline" and kind == allure.attachment_type.TEXT
    lines = text.splitlines()
    assert lines[0] == f"fault proxy {REDACTED}: 4 event(s), seconds from the first"  # redacted
    assert "latency" not in text and "listening" not in text  # before the mark
    assert [line.split(" s  ", 1)[1] for line in lines[1:]] == [
        "blackhole on", "partition for 3.000 s", "partition healed", "heal"
    ]
    assert lines[1].strip().startswith("+0.000 s")
    assert fault_timeline_text(proxy, since=len(proxy.timeline)) == "fault proxy dev1-broker: no events"
