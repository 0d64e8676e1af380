"""Reporting: what a 3 a.m. failure needs to be understood from the report alone.

* Every attachment and log goes through a ``Redactor`` first: provisioned passwords,
  private keys and tokens never reach Allure results or log files. Known secrets are cut
  out by value (a bare password or token has no shape a pattern could catch): the ones the
  session registers, the values of secret-named environment variables (``*_TOKEN``,
  ``*_PASSWORD``, ``AWS_SECRET_ACCESS_KEY`` ...) and, for a PEM key, its base64 body too.
* ``environment.properties`` names the rig, firmware (version and `firmware_sha256`),
  broker and tool versions.
* `attach_fault_timeline` puts the fault proxy's timeline on the test's own page.
* `CATEGORIES` separate product defects (the device misbehaved: assertion failures) from
  infrastructure (a port vanished, a broker died: *broken*), which the plugin decides by
  type (`hil.errors`) and marks in the message Allure matches. Allure 3 reads them from
  its configuration (`hil.reporting.html_report` writes it); ``categories.json`` in the
  results is for Allure 2's readers.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from hil.errors import INFRASTRUCTURE_MARKER
from hil.reporting.evidence import attach_to_test
from hil.secret import Secret, reveal

REDACTED = "[REDACTED]"

_PATTERNS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),
    re.compile(r"(?i)\b([\w-]*(?:password|passwd|pass|pwd|secret|token|api[_-]?key))(\"?\s*[:=]\s*\"?)([^\s\",}]+)"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
)


# Environment variables whose values are secrets: a name part (between underscores) like
# these, or one of these pairs; not a name that points at a secret (…_FILE, …_PATH).
_SECRET_NAME_PARTS = frozenset({"PASSWORD", "PASSWD", "PASS", "SECRET", "TOKEN", "APIKEY", "CREDENTIALS"})
_SECRET_NAME_PAIRS = ("API_KEY", "ACCESS_KEY", "PRIVATE_KEY", "SECRET_KEY", "AUTH_KEY", "SESSION_KEY")
_NOT_SECRET_SUFFIXES = ("_FILE", "_PATH", "_DIR", "_URL", "_USER", "_USERNAME", "_NAME", "_ID")
_ENV_SECRET_MIN_LEN = 8  # "1", "true", "yes": flags, not secrets
_PEM_BODY_LINE_MIN_LEN = 16  # a PEM's last base64 line may be a few characters only


def is_secret_name(name: str) -> bool:
    """Whether an environment variable named ``name`` holds a secret by its name."""
    upper = name.upper()
    if upper.endswith(_NOT_SECRET_SUFFIXES):
        return False
    return bool(_SECRET_NAME_PARTS & set(upper.split("_"))) or any(pair in upper for pair in _SECRET_NAME_PAIRS)


def environment_secrets(environ: Mapping[str, str]) -> list[str]:
    """The values of ``environ``'s secret-named variables (CI hands tokens over this way)."""
    return [
        value
        for name, value in environ.items()
        if is_secret_name(name) and len(value.strip()) >= _ENV_SECRET_MIN_LEN
    ]


class Redactor:
    """Removes known secrets (exact strings) and anything shaped like one (patterns).

    ``environ`` (default: this process's environment) contributes the values of its
    secret-named variables; pass ``{}`` for a redactor that knows only what it is given.
    """

    def __init__(self, secrets: Iterable[str] = (), *, environ: Mapping[str, str] | None = None) -> None:
        self._secrets: set[str] = set()
        self.add(*environment_secrets(os.environ if environ is None else environ))
        self.add(*secrets)

    def add(self, *secrets: str | Secret | None) -> None:
        for held in secrets:
            secret = reveal(held)  # a Secret is cut out by its value
            if secret and len(secret) >= 4:  # shorter strings would redact ordinary text
                for form in _forms(secret):
                    self._secrets.add(form)
                    # A PEM also appears with its line breaks escaped inside JSON.
                    self._secrets.add(form.replace("\n", "\\n"))

    def known(self, text: str) -> str:
        """Only the known secrets cut out, no patterns: for text that shows code (a failure's
        traceback), where ``password = ...`` is a line of source, not a leak."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def __call__(self, text: str) -> str:
        text = self.known(text)
        text = _PATTERNS[0].sub(REDACTED, text)
        text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return _PATTERNS[2].sub(REDACTED, text)

    def bytes(self, data: bytes) -> bytes:
        return self(data.decode("utf-8", "replace")).encode()


def _forms(secret: str) -> list[str]:
    """A secret and the parts of it that are secret on their own: for a PEM, its base64
    body joined into one line and each of its lines (a key printed without its header
    lines, or cut short in a log, is still the key)."""
    forms = [secret, secret.strip()]
    if "-----BEGIN" in secret:
        body = [line.strip() for line in secret.splitlines() if line.strip() and not line.startswith("-----")]
        forms.append("".join(body))
        forms.extend(line for line in body if len(line) >= _PEM_BODY_LINE_MIN_LEN)
    return [form for form in forms if len(form) >= 4]


BROKEN_PROPERTY = ("hil_outcome", "broken")
"""The JUnit property the plugin puts on a test that infrastructure stopped, decided by
type (`hil.errors.classify`): what `mark_broken_in_junit`, the gate and the meta-suite read."""

CATEGORIES = [
    {
        # Allure marks every error that is not an assertion *broken*; of those, the ones
        # the plugin judged infrastructure carry the marker at the start of their message.
        "name": "Infrastructure (rig, port, broker, flashing)",
        "matchedStatuses": ["broken"],
        "messageRegex": rf"[\s\S]*{re.escape(INFRASTRUCTURE_MARKER)}[\s\S]*",
    },
    {"name": "Product defects (the device broke its contract)", "matchedStatuses": ["failed"]},
    {"name": "Test defects (the test itself errored)", "matchedStatuses": ["broken"]},
]


def is_broken(user_properties: Iterable[Sequence[object]]) -> bool:
    """Whether a test report's properties carry the `BROKEN_PROPERTY` (from an xdist
    worker they arrive as lists, not tuples)."""
    return any(tuple(prop) == BROKEN_PROPERTY for prop in user_properties)


def mark_broken_in_junit(path: Path) -> int:
    """Make each ``<failure>`` of a testcase with the `BROKEN_PROPERTY` an ``<error>``, and
    return how many. pytest writes every failure of a test's call as a failure; one that
    infrastructure caused (a board process killed mid-test) is an error, as a failed
    setup is, for every JUnit reader (CI's test tab as well as ``hil gate``)."""
    tree = ET.parse(path)
    changed = 0
    for suite in tree.iter("testsuite"):
        moved = 0
        for case in suite.iter("testcase"):
            props = {(p.get("name"), p.get("value")) for p in case.iter("property")}
            if BROKEN_PROPERTY not in props:
                continue
            for child in case:
                if child.tag == "failure":
                    child.tag = "error"
                    moved += 1
        if moved:
            suite.set("failures", str(int(suite.get("failures", "0")) - moved))
            suite.set("errors", str(int(suite.get("errors", "0")) + moved))
            changed += moved
    if changed:
        tree.write(path, encoding="utf-8", xml_declaration=True)
    return changed


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
    """A picture (``hil.reporting.charts``) on the running test's own report page, from its
    body or a fixture's teardown alike (`hil.reporting.evidence`). Outside an Allure run
    (no ``--alluredir``) nothing is attached, which costs nothing."""
    import allure

    attach_to_test(svg, name, allure.attachment_type.SVG)


class _Timeline(Protocol):
    @property
    def timeline(self) -> list[tuple[float, str]]: ...

    name: str


def fault_timeline_text(
    proxy: _Timeline, *, since: int = 0, redact: Callable[[str], str] | None = None
) -> str:
    """The fault proxy's events from position ``since`` (``len(proxy.timeline)`` taken
    when a test began), one per line with seconds from the first of them."""
    events: Sequence[tuple[float, str]] = proxy.timeline[since:]
    if not events:
        return f"fault proxy {proxy.name}: no events"
    start = events[0][0]
    lines = [f"fault proxy {proxy.name}: {len(events)} event(s), seconds from the first"]
    lines += [f"{at - start:+9.3f} s  {event}" for at, event in events]
    text = "\n".join(lines) + "\n"
    return redact(text) if redact is not None else text


def attach_fault_timeline(
    proxy: _Timeline,
    *,
    since: int = 0,
    redact: Callable[[str], str] | None = None,
    name: str = "fault timeline",
) -> str:
    """Attach `fault_timeline_text` to the running test's own report page (the network
    fixture does it at teardown, after the heal) and return it. Outside an Allure run
    nothing is attached."""
    import allure

    text = fault_timeline_text(proxy, since=since, redact=redact)
    attach_to_test(text, name, allure.attachment_type.TEXT)
    return text


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
            # surrogateescape: a file with stray non-UTF-8 bytes is still swept (and its
            # other bytes kept as they were), not skipped with its secrets in it.
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue
        clean = redactor(text)
        if clean != text:
            path.write_text(clean, encoding="utf-8", errors="surrogateescape")
            changed += 1
    return changed
