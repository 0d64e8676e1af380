"""A planted password, key and token appear nowhere: not in pytest's output (run with
``-l``, locals shown), not in junit.xml, not in any file under the Allure results or logs.

The secrets are the session's own: the device's MQTT password and private key and the
observer's password (from the session's broker), and a bare token (an AWS-style secret
access key, 40 random characters, in the environment as CI would hand it over). The planted
test holds them in secret-named locals (as the framework hands them out, `hil.secret.Secret`,
and revealed), a secrets list and a BrokerAccess; prints each bare, in no ``name=value``
shape a pattern could catch, logs them and puts them in its assertion message. Its output,
junit.xml and every file under the Allure results and the log dir are then searched for
each whole secret, for the key's base64 body (joined, and line by line) and for the key as
JSON writes it (line breaks escaped).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

PLANTED_TEST = '''
import json
import logging
import os
from pathlib import Path

def test_that_leaks_everything(dut, hil_session, console):
    creds = hil_session.broker.credentials(dut.device_id)
    access = hil_session.broker_access()
    observer_password = access.observer_password  # a Secret, as handed out
    secret_key, mqtt_password = creds.client_key_pem, creds.password  # Secrets too
    key, password = secret_key.reveal(), mqtt_password.reveal()  # revealed: plain str locals
    token = os.environ["AWS_SECRET_ACCESS_KEY"]
    secrets = [password, key, token, observer_password.reveal(), mqtt_password]
    body = "".join(line for line in key.splitlines() if not line.startswith("-----"))
    # Tell the outer test what to look for (outside the results and log dirs).
    Path(os.environ["PLANTED_SECRETS"]).write_text(
        json.dumps({"password": password, "key": key, "observer_password": observer_password.reveal()})
    )
    print("device key:", key)
    print("its body alone:", body)
    print("as JSON:", json.dumps({"k": key}))
    print("wifi password:", "hil-lab-password")
    print(password)
    print(token)
    logging.getLogger("leak").error("mqtt_pass=%s", password)
    logging.getLogger("leak").error("bare: %s %s", password, token)
    assert False, f"fail on purpose, so that every capture lands in the report: {password} {token}"
'''


def key_body(pem: str) -> tuple[str, list[str]]:
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return "".join(lines), [line for line in lines if len(line) >= 16]


def test_planted_secrets_reach_no_report_or_log_file(tmp_path: Path) -> None:
    (tmp_path / "test_leak.py").write_text(PLANTED_TEST)
    allure, logs, junit = tmp_path / "allure", tmp_path / "logs", tmp_path / "junit.xml"
    planted = tmp_path / "planted.json"
    token = "".join(secrets.choice(string.ascii_letters + string.digits + "/+") for _ in range(40))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HIL_CACHE_DIR": str(tmp_path / "cache"),
        "HIL_LOCK_DIR": str(tmp_path / "locks"),
        "AWS_SECRET_ACCESS_KEY": token,
        "PLANTED_SECRETS": str(planted),
    }
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "test_leak.py", "-p", "no:cacheprovider",
            "--rigs-dir", str(ROOT / "rigs"), "--firmware", "prints_secrets",
            "--alluredir", str(allure), "--hil-log-dir", str(logs), "-o", "log_level=INFO",
            "-l", "--junitxml", str(junit),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:]
    assert "fail on purpose" in result.stdout
    console_log = next(logs.rglob("console.log")).read_text()
    assert "credentials ssid=hil-lab password=[REDACTED]" in console_log  # the device did print it

    known = json.loads(planted.read_text())
    password, key = known["password"], known["key"]
    body, body_lines = key_body(key)
    assert len(password) >= 8 and "PRIVATE KEY" in key and len(body) > 100 and body_lines
    searched = {
        "wifi password": "hil-lab-password",
        "mqtt password": password,
        "observer password": known["observer_password"],
        "token": token,
        "private key": key,
        "private key as JSON": json.dumps(key)[1:-1],
        "key body": body,
        **{f"key body line {i}": line for i, line in enumerate(body_lines)},
        "PEM header": "BEGIN EC PRIVATE KEY",
    }
    files = [p for p in [*allure.rglob("*"), *logs.rglob("*")] if p.is_file()]
    # The secrets did reach the report (captured output), and were cut out there.
    assert any("[REDACTED]" in p.read_text(errors="replace") for p in allure.rglob("*") if p.is_file())
    assert len(files) > 5
    # pytest -l showed the locals: the framework's Secrets masked, the revealed ones cut out.
    assert "observer_password = Secret('***')" in result.stdout, result.stdout[-3000:]
    assert "[REDACTED]" in result.stdout and "[REDACTED]" in junit.read_text()
    outputs = {"stdout": result.stdout, "stderr": result.stderr, "junit.xml": junit.read_text()}
    outputs |= {str(path.relative_to(tmp_path)): path.read_bytes().decode("utf-8", "replace") for path in files}
    leaks = [f"{what} in {where}" for where, text in outputs.items() for what, secret in searched.items() if secret in text]
    assert not leaks, "\n".join(leaks)
