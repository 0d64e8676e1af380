"""The test's own Allure page (`hil.reporting.evidence`): what a test and its fixtures'
teardowns attach is the test's; parameters read as meant and are the same every run; no
``fixture::<lambda>`` rows of unknown status. Through a real allure-pytest run (pytester,
in a subprocess with the project's plugin)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from hil.reporting.evidence import (
    CLAUSE_PAGE,
    PARAMETER_MAX_CHARS,
    mqtt_trace,
    readable_parameter,
    serial_log,
)

ROOT = Path(__file__).resolve().parents[3]

SUITE = """
import pytest
from hil.reporting.report import attach_svg

def partition(): pass
def blackhole(): pass

@pytest.fixture
def chart():
    yield
    attach_svg("sweep", "<svg xmlns='http://www.w3.org/2000/svg'/>")  # in the teardown

def test_fails_with_a_chart(chart):
    attach_svg("in the body", "<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert 1 == 2

@pytest.mark.parametrize("payload", [pytest.param(b"reset", id="not-json"), pytest.param(b"\\x00\\xff", id="binary")])
def test_bytes(payload):
    pass

@pytest.mark.parametrize(("fault", "refused"), [(partition, True), (blackhole, False)], ids=["partition", "blackhole"])
def test_functions(fault, refused):
    pass
"""


@pytest.fixture
def results(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, dict[str, object]]:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_suite=SUITE)
    run = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--rootdir={pytester.path}", f"--hil-log-dir={tmp_path / 'logs'}",
        "--alluredir", "results",
    )  # fmt: skip
    run.assert_outcomes(passed=4, failed=1)
    found = {}
    for path in (pytester.path / "results").glob("*-result.json"):
        data = json.loads(path.read_text())
        found[data["name"]] = data
    found["containers"] = {"afters": [a for p in (pytester.path / "results").glob("*-container.json")
                                      for a in json.loads(p.read_text()).get("afters", [])]}  # fmt: skip
    found["globals"] = {"attachments": [a for p in (pytester.path / "results").glob("*-globals.json")
                                        for a in json.loads(p.read_text()).get("attachments", [])]}  # fmt: skip
    found["results_dir"] = {"path": str(pytester.path / "results")}
    return found


def test_the_clause_matrix_is_a_page_of_the_report(results: dict[str, dict[str, object]]) -> None:
    [page] = results["globals"]["attachments"]  # type: ignore[misc]
    assert page["name"] == CLAUSE_PAGE and page["type"] == "text/html"  # type: ignore[index]
    body = (Path(str(results["results_dir"]["path"])) / page["source"]).read_text()  # type: ignore[index]
    assert "<table" in body and "<b>no test</b>" in body  # no test of this suite names a clause


def test_what_a_teardown_attaches_is_on_the_tests_own_page(results: dict[str, dict[str, object]]) -> None:
    failed = results["test_fails_with_a_chart"]
    assert [a["name"] for a in failed["attachments"]] == ["in the body", "sweep"]  # type: ignore[index]
    afters = results["containers"]["afters"]
    assert "chart::1" in [a["name"] for a in afters]  # type: ignore[index]
    assert not [a for a in afters if a.get("attachments")]  # type: ignore[union-attr]


def test_no_fixture_shows_pytests_own_finalizer_of_unknown_status(results: dict[str, dict[str, object]]) -> None:
    afters = results["containers"]["afters"]
    assert all(a.get("status") == "passed" and "<lambda>" not in a["name"] for a in afters), afters  # type: ignore[union-attr, index]


def test_parameters_read_as_meant_and_tell_cases_apart(results: dict[str, dict[str, object]]) -> None:
    def parameters(name: str) -> dict[str, str]:
        return {p["name"]: p["value"] for p in results[name]["parameters"]}  # type: ignore[index, union-attr]

    assert parameters("test_bytes[not-json]") == {"payload": "b'reset'"}
    assert parameters("test_bytes[binary]") == {"payload": "b'\\x00\\xff'"}
    assert parameters("test_functions[partition]") == {"fault": "partition", "refused": "True"}
    assert parameters("test_functions[blackhole]") == {"fault": "blackhole", "refused": "False"}


class Holder:
    def method(self) -> None: ...


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (b"reset", "b'reset'"),
        (bytearray(b"ab"), "b'ab'"),
        (len, "len"),
        (Holder, "Holder"),
        (Holder().method, "Holder.method"),
        (functools.partial(Holder.method), "functools.partial(<function Holder.method>)"),  # its address cut
        (object(), "<object object>"),
        ("text", None),  # its repr stands
        (3, None),
    ],
    ids=["bytes", "bytearray", "builtin", "class", "method", "partial", "object", "str", "int"],
)
def test_readable_parameter(value: object, shown: str | None) -> None:
    assert readable_parameter(value) == shown


def test_a_long_bytes_parameter_is_cut_and_still_told_apart() -> None:
    a, b = bytes(200), bytes(199) + b"\x01"
    shown_a, shown_b = readable_parameter(a), readable_parameter(b)
    assert shown_a is not None and shown_b is not None and shown_a != shown_b
    assert shown_a.startswith(repr(a)[:PARAMETER_MAX_CHARS]) and "(200 bytes, sha256 " in shown_a
    assert len(shown_a) < PARAMETER_MAX_CHARS + 40


def test_a_serial_log_shows_the_lines_before_the_window_as_context() -> None:
    text = serial_log("12:00:01.000  W (5) mqtt: disconnected\n", ["12:00:00.000  I (1) app: boot"], test="t.py::test_x")
    assert text.splitlines() == [
        "--- the 1 line(s) before this test (context) ---",
        "12:00:00.000  I (1) app: boot",
        "--- t.py::test_x ---",
        "12:00:01.000  W (5) mqtt: disconnected",
    ]


def test_an_empty_window_says_so_rather_than_attach_nothing() -> None:
    assert serial_log("", [], test="t.py::test_x") == "--- no serial output during this test ---\n"
    assert mqtt_trace([]) == "--- no MQTT message during this test ---\n"
    assert mqtt_trace(["1.000 esp32/d/sensors {}"]) == "1.000 esp32/d/sensors {}\n"
