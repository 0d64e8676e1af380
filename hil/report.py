"""Reporting: what a 3 a.m. failure needs to be understood from the report alone.

* Every attachment and log goes through a ``Redactor`` first: provisioned passwords,
  private keys and tokens never reach Allure results or log files.
* ``environment.properties`` names the rig, firmware, broker and tool versions.
* ``categories.json`` separates product defects (the device misbehaved: assertion
  failures) from infrastructure (a port vanished, a broker did not start: *broken*).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

REDACTED = "[REDACTED]"

_PATTERNS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),
    re.compile(r"(?i)\b([\w-]*(?:password|passwd|pass|pwd|secret|token|api[_-]?key))(\"?\s*[:=]\s*\"?)([^\s\",}]+)"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
)


class Redactor:
    """Removes known secrets (exact strings) and anything shaped like one (patterns)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        for secret in secrets:
            if secret and len(secret) >= 4:  # shorter strings would redact ordinary text
                self._secrets.add(secret)
                # A PEM also appears with its line breaks escaped inside JSON.
                self._secrets.add(secret.replace("\n", "\\n"))

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        text = _PATTERNS[0].sub(REDACTED, text)
        text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return _PATTERNS[2].sub(REDACTED, text)

    def bytes(self, data: bytes) -> bytes:
        return self(data.decode("utf-8", "replace")).encode()


# Errors that say the rig, its port, the broker or the flasher failed, not the device.
# A session-level error of another kind (e.g. the device never came online) may be the
# firmware's fault, so it is not on this list.
INFRASTRUCTURE_ERRORS = (
    "FlashInfrastructureError",
    "VirtualBoardError",
    "BrokerError",
    "ConsoleError",  # the port cannot be opened, or was lost and did not come back
    "SerialException",
    "Ser2netError",
    "FaultProxyError",
    "NoRigAvailable",
    "LabgridError",  # the labgrid coordinator is unreachable, or a place cannot be a rig
)


def is_infrastructure(exc: BaseException) -> bool:
    return any(cls.__name__ in INFRASTRUCTURE_ERRORS for cls in type(exc).__mro__)


CATEGORIES = [
    {
        "name": "Infrastructure (rig, port, broker, flashing)",
        "matchedStatuses": ["broken"],
        "messageRegex": f".*({'|'.join(INFRASTRUCTURE_ERRORS)}|taken out of this run|port lost).*",
    },
    {"name": "Product defects (the device broke its contract)", "matchedStatuses": ["failed"]},
    {"name": "Test defects (the test itself errored)", "matchedStatuses": ["broken"]},
]


def write_results_metadata(alluredir: Path, environment: Mapping[str, str]) -> None:
    """``environment.properties``, ``categories.json`` and ``executor.json``."""
    alluredir.mkdir(parents=True, exist_ok=True)
    lines = [f"{key}={_escape(str(value))}" for key, value in sorted(environment.items())]
    (alluredir / "environment.properties").write_text("\n".join(lines) + "\n")
    (alluredir / "categories.json").write_text(json.dumps(CATEGORIES, indent=2))
    (alluredir / "executor.json").write_text(json.dumps({"name": "hil", "type": "pytest"}))


def write_session_record(log_dir: Path, environment: Mapping[str, str]) -> Path:
    """``session-<rig>.json`` in the log dir: what one pytest session (one xdist worker)
    ran on, for tools that summarise a run (``hil gate``) without parsing reports."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"session-{environment.get('rig', 'no-rig')}.json"
    path.write_text(json.dumps(dict(environment), indent=1, sort_keys=True) + "\n")
    return path


def attach_svg(name: str, svg: str) -> None:
    """A picture (``hil.charts``) on the current test's report entry. Outside an Allure
    run (no ``--alluredir``) allure-pytest drops it, which costs nothing."""
    import allure

    allure.attach(svg, name=name, attachment_type=allure.attachment_type.SVG)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def redact_tree(root: Path, redactor: Redactor) -> int:
    """Redact every text file under ``root`` in place; return how many changed.

    A last sweep over results and logs, for anything written outside our attachments
    (pytest's own captured output, say)."""
    changed = 0
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix in (".png", ".bin", ".db"):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        clean = redactor(text)
        if clean != text:
            path.write_text(clean)
            changed += 1
    return changed
