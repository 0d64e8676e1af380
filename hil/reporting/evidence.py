"""The test's own Allure page: where its evidence goes, and parameters it can be told by.

allure-pytest attaches to whatever runs innermost: in a test's call the test (or its open
step), in its teardown the fixture finalizer being run, which the report files under
"Tear down" as ``fixture::1``. A serial log, an MQTT trace, a fault timeline or a sweep
chart is the *test's* evidence, though often gathered in a fixture's teardown once the
test body is done; `attach_to_test` puts it on the running test's result, whatever phase
it is in.

Two repairs of what allure-pytest 2.16 writes, made on the live result as it is built:

* Parameter values: it writes ``repr()`` of each. A function shows its memory address
  (different every run; Allure 3 keys a test's history by the parameter *text*, so every
  run is a new test) and bytes show as ``<class 'bytes'>`` (two cases with different
  bytes become one test and a retry). `readable_parameter` is a stable readable text.
* pytest 9.1 gives every fixture a finalizer of its own (``FixtureDef.execute``'s lambda
  calling ``pytest_fixture_post_finalizer``); allure-pytest wraps it as a teardown that
  is never closed, shown as ``fixture::<lambda>`` with status unknown on every test
  (allure-python#918). `unwrap_pytest_finalizers` leaves pytest's own finalizers alone.

`attach_clause_page` puts the run's device-contract clause matrix in the report itself, as
a global attachment (a page of the run, not of a test).

Outside an Allure run (no ``--alluredir``) every function here does nothing.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hil.reporting.clause_matrix import ClauseMatrix

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
PARAMETER_MAX_CHARS = 120
"""A longer parameter text is cut, with its length and a hash (stable, and two long values
that start alike still differ)."""


def _running() -> tuple[Any, Any] | None:
    """allure-pytest's reporter and the result of the test it is running, or None."""
    try:
        from allure_commons import plugin_manager
        from allure_commons.model2 import TestResult
    except ImportError:  # pragma: no cover - allure-pytest is a dependency
        return None
    for plugin in plugin_manager.get_plugins():
        reporter = getattr(plugin, "allure_logger", None)  # allure-pytest's AllureListener
        if reporter is None or not hasattr(reporter, "get_test"):
            continue
        try:
            test = reporter.get_test(None)  # the innermost open TestResult
        except (KeyError, StopIteration):  # a thread of the test's with nothing open
            continue
        if isinstance(test, TestResult):
            return reporter, test
    return None


def attach_to_test(body: str | bytes, name: str, attachment_type: Any) -> bool:
    """Attach ``body`` to the running test's own result (not a step, not a fixture);
    False when there is none (no ``--alluredir``, or no test running)."""
    found = _running()
    if found is None:
        return False
    reporter, test = found
    reporter.attach_data(str(uuid.uuid4()), body, name=name, attachment_type=attachment_type, parent_uuid=test.uuid)
    return True


def readable_parameter(value: object) -> str | None:
    """A stable, readable text for a parameter whose ``repr`` is neither, else None (the
    repr allure-pytest wrote stands): bytes as their literal, a function or class by its
    qualified name, anything else without its memory address."""
    if isinstance(value, bytes | bytearray):
        text = repr(bytes(value))
        if len(text) <= PARAMETER_MAX_CHARS:
            return text
        digest = hashlib.sha256(value).hexdigest()[:12]
        return f"{text[:PARAMETER_MAX_CHARS]}… ({len(value)} bytes, sha256 {digest})"
    qualname = getattr(value, "__qualname__", None)
    if callable(value) and isinstance(qualname, str):  # a function, method or class
        return qualname
    text = repr(value)  # what allure-pytest writes for anything but bytes
    return _ADDRESS.sub("", text) if _ADDRESS.search(text) else None


def make_parameters_readable(values: Mapping[str, object]) -> int:
    """Rewrite the running test's parameters (``values``: pytest's callspec params) that
    `readable_parameter` reads better; return how many."""
    found = _running()
    if found is None:
        return 0
    changed = 0
    for parameter in found[1].parameters:
        if parameter.name in values:
            text = readable_parameter(values[parameter.name])
            if text is not None and text != parameter.value:
                parameter.value = text
                changed += 1
    return changed


def unwrap_pytest_finalizers(fixturedef: object) -> int:
    """Give back pytest's own finalizers of ``fixturedef`` that allure-pytest wrapped as
    fixture teardowns (module ``_pytest.*``); the fixture's real teardowns stay reported.
    Return how many."""
    try:
        from allure_commons import fixture as allure_fixture
    except ImportError:  # pragma: no cover - allure-pytest is a dependency
        return 0
    finalizers = getattr(fixturedef, "_finalizers", None)
    if not isinstance(finalizers, list):
        return 0
    unwrapped = 0
    for index, finalizer in enumerate(finalizers):
        inner = getattr(finalizer, "_fixture_function", None) if isinstance(finalizer, allure_fixture) else None
        if inner is not None and str(getattr(inner, "__module__", "")).startswith("_pytest."):
            finalizers[index] = inner
            unwrapped += 1
    return unwrapped


SERIAL_CONTEXT_LINES = 20
"""How many lines from before a test's window its serial log shows first: the first test
of a session failed with the boot (flashed, provisioned, connected) just before it."""


def serial_log(window: str, before: Sequence[str], *, test: str) -> str:
    """A test's serial log for its page: the last lines before its window, marked as
    context, then the window's own (or a line saying the device printed nothing: an empty
    attachment reads as a missing one)."""
    parts = []
    if before:
        parts += [f"--- the {len(before)} line(s) before this test (context) ---", *before, f"--- {test} ---"]
    parts.append(window.rstrip("\n") if window.strip() else "--- no serial output during this test ---")
    return "\n".join(parts) + "\n"


def mqtt_trace(lines: Sequence[str]) -> str:
    """A test's MQTT trace for its page (one message a line), or a line saying there was none."""
    return "\n".join(lines) + "\n" if lines else "--- no MQTT message during this test ---\n"


CLAUSE_PAGE = "device-contract clause matrix"


def attach_clause_page(matrix: ClauseMatrix) -> None:
    """The run's clause matrix (clause -> the tests that assert it, the clauses none does)
    as a page of the report itself: Allure 3's Global Attachments (``hil report`` also
    writes it as ``clauses.html`` beside ``index.html``)."""
    import allure

    from hil.reporting.clause_matrix import render_html

    allure.global_attach(render_html(matrix), name=CLAUSE_PAGE, attachment_type=allure.attachment_type.HTML)
