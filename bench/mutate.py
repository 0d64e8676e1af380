"""Mutation testing: how many small bugs in the reference firmware the HIL suites catch.

Each mutant is one change to the firmware model's contract code (``hil.sim.mutants``:
constants x2 /2 +-1, comparisons swapped with their neighbours, boolean operands and
``not`` dropped, True/False and retain/clean-session flags flipped, a call or await
statement dropped, an order reversed). It is applied only inside the board process,
by an import hook (``HIL_MUTANT``, hil.sim.mutation): the tree on disk never changes, so
others can work and test beside a run.

1. Coverage, once (``--trace``, or automatically when there is none): ``pytest tests/hil``
   with the board recording which firmware lines run under which test
   (``HIL_MUTATION_TRACE``, bench/mutate_probe.py). Kept in ``WORK/coverage.json`` with
   the sources it was taken on; later edits are followed by diffing those sources, so
   lines that moved still map, and new lines count as not covered until the next trace.
2. Per mutant: the tests whose board ran the mutated lines (for a module- or class-level
   constant: the lines that read that name), run with ``pytest -x`` (stops at the first
   failure), ``-n 2`` when they are long. Verdicts:
   - killed: a test failed, or errored on something the device did (it never came
     online, a request timed out); a board process that crashed on a traceback through
     the mutated module counts too (``crash``: the firmware does not boot);
   - timeout: the run overran (3x its tests' traced time + 2 min): a hung device; killed;
   - survived: every test passed; ``uncovered``: no test runs the line (survived too);
   - error: the rig could not be used (no rig free, broker or port failure, a crash that
     is not the mutant's): no verdict; excluded from the score, listed, to be re-run;
   - equivalent: listed in bench/mutants-equivalent.toml with a reason; excluded.
3. Prints the score and every survivor (file:line, the change, the tests run) and writes
   ``results.json`` and ``results.md`` to ``WORK/runs/<time>/``.

Scope: ``--modules`` (default: reference and its tasks, mqtt_link, watchdog, ota, settings);
constants get their first replacement only unless ``--all-variants``. ``--all`` runs the
scope; ``--limit N`` a deterministic spread of N of it (by hash, across modules);
``--ids`` named ones; ``--sample`` the fixed CI sample (bench/mutants-sample.toml, which
also names each mutant's tests, so CI needs no trace). ``--list`` prints the mutants and
the tests each would run, and runs nothing.

Run: ``.venv/bin/python bench/mutate.py --all`` (``--work DIR``, default
``~/.cache/hil/mutate``). One pytest process at a time.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from hil.sim.mutants import Mutant, enumerate_mutants, iter_names  # noqa: E402
from hil.sim.mutation import MUTANT_ENV, TRACE_ENV, TRACED_MODULES  # noqa: E402

# The reference firmware (its wiring and each of its tasks) and the libraries it runs.
TASK_MODULES = tuple(m.rsplit(".", 1)[-1] for m in TRACED_MODULES if m.startswith("hil.sim.firmware.tasks."))
DEFAULT_MODULES = ("reference", *TASK_MODULES, "mqtt_link", "watchdog", "ota", "settings")
EQUIVALENTS = BENCH / "mutants-equivalent.toml"
SAMPLE = BENCH / "mutants-sample.toml"
SUITES = "tests/hil"
# Above this much traced test time a mutant's tests run on two xdist workers.
PARALLEL_ABOVE_S = 90.0
# Errors that say the rig, not the device, failed (hil.reporting.report.INFRASTRUCTURE_ERRORS and
# pytest's own); a board crash is the device's only when the traceback passes through
# the mutated module.
INFRA = re.compile(
    r"FlashInfrastructureError|VirtualBoardError|BrokerError|ConsoleError|SerialException|"
    r"Ser2netError|FaultProxyError|NoRigAvailable|LabgridError|taken out of this run|port lost|"
    r"hil sim fleet exited"
)


def module_path(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def full_module(short: str) -> str:
    for module in TRACED_MODULES:
        if module.rsplit(".", 1)[-1] == short:
            return module
    raise SystemExit(f"mutate: unknown module {short!r}; one of {', '.join(m.rsplit('.', 1)[-1] for m in TRACED_MODULES)}")


# -- mutants ----------------------------------------------------------------------------
def generate(modules: Iterable[str], *, all_variants: bool) -> list[Mutant]:
    mutants: list[Mutant] = []
    for module in modules:
        found = enumerate_mutants(module_path(module).read_text(), module)
        mutants += [m for m in found if all_variants or m.variant == 0]
    return mutants


def spread(mutants: list[Mutant], limit: int) -> list[Mutant]:
    """``limit`` mutants, the same ones for the same sources: round-robin over the
    modules, each module's mutants in the order of a hash of their ids."""
    by_module: dict[str, list[Mutant]] = defaultdict(list)
    for m in sorted(mutants, key=lambda m: hashlib.sha1(m.id.encode()).hexdigest()):
        by_module[m.module].append(m)
    chosen: list[Mutant] = []
    while len(chosen) < limit and any(by_module.values()):
        for queue in by_module.values():
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def load_equivalents() -> dict[str, str]:
    if not EQUIVALENTS.exists():
        return {}
    data = tomllib.loads(EQUIVALENTS.read_text())
    return {entry["id"]: entry["reason"] for entry in data.get("equivalent", [])}


def load_sample() -> dict[str, list[str]]:
    data = tomllib.loads(SAMPLE.read_text())
    return {entry["id"]: list(entry["tests"]) for entry in data.get("mutant", [])}


# -- coverage ---------------------------------------------------------------------------
def run_trace(work: Path, extra: Sequence[str]) -> Path:
    """``pytest tests/hil`` once with the line recorder; returns coverage.json."""
    run = work / "trace"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    env = _env(work, {TRACE_ENV: str(run / "lines")})
    command = [
        sys.executable, "-m", "pytest", SUITES, "-n", "2", "-p", "mutate_probe", "-q", "-p", "no:cacheprovider",
        "--junitxml", str(run / "junit.xml"), "--hil-log-dir", str(run / "logs"), *extra,
    ]  # fmt: skip
    print(f"coverage run: {' '.join(command[2:])}", flush=True)
    started = time.monotonic()
    with (run / "pytest.log").open("w") as log:
        subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    print(f"coverage run took {time.monotonic() - started:.0f} s", flush=True)
    return write_coverage(run, work / "coverage.json")


def write_coverage(run: Path, out: Path) -> Path:
    """coverage.json: per test, the lines its board ran, per file and per source text."""
    lines: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for tsv in (run / "lines").glob("lines-*.tsv"):
        for row in tsv.read_text().splitlines():
            context, path, line, sha = row.split("\t")
            lines[context][f"{path}|{sha}"].add(int(line))
    sources = {
        f"{path}|{sha}": (run / "lines" / f"source-{sha}.py").read_text()
        for files in lines.values()
        for key in files
        for path, sha in [key.split("|")]
    }
    cases = junit_cases(run / "junit.xml")
    tests = {
        nodeid: {
            "duration": cases.get(nodeid, {}).get("time", 0.0),
            "outcome": cases.get(nodeid, {}).get("outcome", "unknown"),
            "lines": {key: sorted(hit) for key, hit in files.items()},
        }
        for nodeid, files in lines.items()
        if "::" in nodeid
    }
    out.write_text(json.dumps({"taken": time.strftime("%Y-%m-%d %H:%M"), "sources": sources, "tests": tests}))
    return out


@dataclass
class Coverage:
    """Which tests ran which line of today's sources."""

    tests: dict[str, dict[str, object]]
    by_line: dict[tuple[str, int], set[str]]
    taken: str

    @classmethod
    def load(cls, path: Path) -> Coverage:
        data = json.loads(path.read_text())
        by_line: dict[tuple[str, int], set[str]] = defaultdict(set)
        # Each text a board ran, mapped onto today's file: lines that moved follow.
        maps = {
            key: _line_map(old, Path(key.split("|")[0]).read_text())
            for key, old in data["sources"].items()
            if Path(key.split("|")[0]).exists()
        }
        for nodeid, test in data["tests"].items():
            if test["outcome"] != "passed":
                continue  # a test failing without a mutant says nothing about one
            for key, hits in test["lines"].items():
                moved = maps.get(key, {})
                for line in hits:
                    if line in moved:
                        by_line[(key.split("|")[0], moved[line])].add(nodeid)
        return cls(data["tests"], by_line, data["taken"])

    def tests_for(self, mutant: Mutant, uses: dict[tuple[str, str], set[int]]) -> list[str]:
        file = str(module_path(mutant.module))
        keys = {(file, n) for n in range(mutant.line, mutant.end_line + 1)} | {(file, mutant.stmt_line)}
        if mutant.defines is not None:
            for (used_in, name), at in uses.items():
                if name == mutant.defines:
                    keys |= {(used_in, n) for n in at}
        found: set[str] = set()
        for key in keys:
            found |= self.by_line.get(key, set())
        # Quickest first: with -x a killed mutant costs only the tests up to the first failure.
        return sorted(found, key=lambda t: (float(self.tests[t]["duration"]), t))  # type: ignore[arg-type]

    def affinity(self, mutant: Mutant, spans: dict[tuple[str, str], tuple[int, int]]) -> dict[str, float]:
        """How specifically each test exercises the mutated function: the sum, over the
        function's lines the test runs, of 1 / the number of tests that run that line.
        Lines every test runs (boot, publish) weigh little; the watchdog's firing path or
        the config rejection weigh much for the few tests that reach them."""
        file = str(module_path(mutant.module))
        start, end = spans.get((mutant.module, mutant.qualname), (mutant.line, mutant.end_line))
        ranges = [(file, start, end), *named_spans(mutant, spans)]
        weights: dict[str, float] = defaultdict(float)
        for path, first, last in ranges:
            for line in range(first, last + 1):
                tests = self.by_line.get((path, line), set())
                for test in tests:
                    weights[test] += 1.0 / len(tests)
        return weights

    def capped(self, tests: list[str], max_seconds: float) -> list[str]:
        """The quickest of ``tests`` that fit in ``max_seconds`` of traced test time (at
        least one): a survivor of a line every test runs would otherwise cost the suite."""
        chosen: list[str] = []
        total = 0.0
        for test in tests:
            took = float(self.tests[test]["duration"])  # type: ignore[arg-type]
            if chosen and total + took > max_seconds:
                continue  # too long for what is left: a shorter one may still fit
            chosen.append(test)
            total += took
        return chosen

    def duration(self, tests: Iterable[str]) -> float:
        return sum(float(self.tests[t]["duration"]) for t in tests)  # type: ignore[arg-type,misc]


def _line_map(old: str, new: str) -> dict[int, int]:
    """Old line number -> new line number for the lines an edit left unchanged."""
    mapping: dict[int, int] = {}
    matcher = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            mapping[block.a + k + 1] = block.b + k + 1
    return mapping


def function_spans() -> dict[tuple[str, str], tuple[int, int]]:
    """(module, qualname) -> first and last line of each function and class."""
    spans: dict[tuple[str, str], tuple[int, int]] = {}

    def walk(node: ast.AST, scope: list[str], module: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = [*scope, child.name]
                spans[(module, ".".join(name))] = (child.lineno, child.end_lineno or child.lineno)
                walk(child, name, module)

    for module in TRACED_MODULES:
        walk(ast.parse(module_path(module).read_text()), [], module)
    return spans


def named_spans(mutant: Mutant, spans: dict[tuple[str, str], tuple[int, int]]) -> list[tuple[str, int, int]]:
    """(file, first, last) of every traced function or class the mutated code names.
    A dropped ``spawn(self._metrics_task())`` or a changed argument of ``publish_health``
    shows in the body it names, which only the tests that wait for that task reach; the
    line itself runs in every boot and says nothing about who would notice."""
    named = set(re.findall(r"[A-Za-z_]\w*", mutant.original))
    # An attribute names the class it holds (``self.metrics = MetricsTask(fw)``).
    held = dict(re.findall(r"self\.(\w+)\s*=\s*([A-Z]\w*)\(", module_path(mutant.module).read_text()))
    named |= {held[name] for name in named if name in held}
    found: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for (module, qualname), (first, last) in spans.items():
        name = qualname.rsplit(".", 1)[-1]
        if name in named and qualname != mutant.qualname:
            found[name].append((str(module_path(module)), first, last))
    # A name many functions share (``run``, ``__init__``) says nothing about which one.
    return [span for spans_of in found.values() if len(spans_of) <= 2 for span in spans_of]


def name_uses() -> dict[tuple[str, str], set[int]]:
    """(file, name) -> lines of the traced modules that read ``name``."""
    uses: dict[tuple[str, str], set[int]] = defaultdict(set)
    for module in TRACED_MODULES:
        path = module_path(module)
        for name, line in iter_names(ast.parse(path.read_text())):
            uses[(str(path), name)].add(line)
    return uses


# -- running ----------------------------------------------------------------------------
@dataclass
class Result:
    id: str
    location: str
    change: str
    operator: str
    verdict: str  # killed, survived, uncovered, timeout, error, equivalent
    tests: list[str] = field(default_factory=list)
    killed_by: str | None = None
    detail: str = ""
    seconds: float = 0.0
    covering: int = 0  # tests that run the mutated lines; ``tests`` is the quickest of them


def _env(work: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in (MUTANT_ENV, TRACE_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))
    # A cache of our own: the mutants' boards keep their flash (NVS a mutant wrote) in
    # cache/boards, away from everyone else's sessions; wiped before each mutant.
    env["HIL_CACHE_DIR"] = str(work / "cache")
    env.update(extra)
    return env


def junit_cases(path: Path) -> dict[str, dict[str, object]]:
    """nodeid -> outcome (passed, failed, error, skipped), time and message."""
    cases: dict[str, dict[str, object]] = {}
    if not path.exists():
        return cases
    for case in ET.parse(path).iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        parts = classname.split(".")
        # tests.hil.test_x[.Class] -> tests/hil/test_x.py[::Class]::name
        split = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
        nodeid = "/".join(parts[: split + 1]) + ".py" + "".join(f"::{p}" for p in parts[split + 1 :]) + f"::{name}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (element.get("message") or "") + "\n" + (element.text or "")
                break
        cases[nodeid] = {"outcome": outcome, "time": float(case.get("time", 0) or 0), "message": message}
    return cases


# The pytest processes the jobs are running (each in its own session, so Ctrl-C reaches
# only this process): stopped by the main thread when the run is interrupted.
RUNNING: set[subprocess.Popen[bytes]] = set()
STOPPING = threading.Event()


def run_mutant(mutant: Mutant, tests: list[str], expected_s: float, work: Path, slot: Path | None = None) -> Result:
    """One mutant's pytest run in ``slot`` (its run directory and its boards' cache; one
    per concurrent job, so jobs never share a board's flash), verdict from its junit."""
    slot = slot or work
    result = Result(mutant.id, mutant.location, mutant.describe(), mutant.operator, "error", tests)
    run = slot / "current"
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(slot / "cache" / "boards", ignore_errors=True)
    run.mkdir(parents=True)
    parallel = ["-n", "2"] if expected_s > PARALLEL_ABOVE_S and len(tests) > 1 else ["-p", "no:xdist"]
    command = [
        sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *parallel,
        "--junitxml", str(run / "junit.xml"), "--hil-log-dir", str(run / "logs"), *tests,
    ]  # fmt: skip
    env = _env(slot, {MUTANT_ENV: f"{mutant.module}={mutant.id}"})
    timeout = 3 * expected_s + 120
    started = time.monotonic()
    with (run / "pytest.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        RUNNING.add(proc)
        try:
            proc.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
        except KeyboardInterrupt:  # the run is being stopped: leave no pytest or board behind
            _stop(proc)
            raise
        finally:
            RUNNING.discard(proc)
    result.seconds = round(time.monotonic() - started, 1)
    cases = junit_cases(run / "junit.xml")
    crash = _board_crash(slot, mutant)
    failed = [(n, c) for n, c in cases.items() if c["outcome"] in ("failed", "error")]
    if timed_out:
        result.verdict, result.detail = "timeout", f"no verdict in {timeout:.0f} s: the device hung"
    elif failed:
        nodeid, case = failed[0]
        message = str(case["message"]).strip()
        result.killed_by = nodeid
        result.detail = message.splitlines()[0][:300] if message else ""
        infra = case["outcome"] == "error" and INFRA.search(message) is not None
        # A process that died at start quotes its traceback (hil sim fleet's LoadError).
        if infra and crash is None and "Traceback" in message and str(module_path(mutant.module)) in message:
            crash = message.strip().splitlines()[-1][:200]
        if not infra:
            result.verdict = "killed"
        elif crash:
            result.verdict, result.detail = "killed", f"crash: {crash}"
        else:
            result.verdict = "error"
    elif cases and all(c["outcome"] == "passed" for c in cases.values()):
        result.verdict = "survived"
    elif crash:
        result.verdict, result.detail = "killed", f"crash: {crash}"
    else:
        tail = (run / "pytest.log").read_text().strip().splitlines()[-3:]
        result.detail = " | ".join(tail)[:300]
    if result.verdict == "error":
        keep = work / "errors" / mutant.id.replace(":", "_")
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(run, keep, ignore=shutil.ignore_patterns("*.bin"))
    return result


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT first (pytest tears its fixtures down: boards, broker), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _board_crash(work: Path, mutant: Mutant) -> str | None:
    """The last line of a board's traceback through the mutated module, if any."""
    path = str(module_path(mutant.module))
    for log in (work / "cache" / "boards").glob("*/board.stderr.log"):
        text = log.read_text(errors="replace")
        if "Traceback" in text and path in text:
            return text.strip().splitlines()[-1][:200]
    return None


# -- reporting --------------------------------------------------------------------------
def summarise(results: list[Result], wall: float) -> dict[str, object]:
    counts = Counter(r.verdict for r in results)
    killed = counts["killed"] + counts["timeout"]
    judged = killed + counts["survived"] + counts["uncovered"]
    run = [r for r in results if r.verdict not in ("equivalent", "uncovered")]
    return {
        "mutants": len(results),
        "killed": killed,
        "of_which_timeout": counts["timeout"],
        "of_which_crash": sum(1 for r in results if r.detail.startswith("crash:")),
        "survived": counts["survived"],
        "uncovered": counts["uncovered"],
        "equivalent": counts["equivalent"],
        "error": counts["error"],
        "score": round(100 * killed / judged, 1) if judged else None,
        "wall_s": round(wall),
        "s_per_mutant_run": round(sum(r.seconds for r in run) / len(run), 1) if run else None,
    }


def report(results: list[Result], summary: dict[str, object], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"command": command, "summary": summary, "results": [asdict(r) for r in results]}, indent=1)
    )
    lines = [f"# Mutation run {time.strftime('%Y-%m-%d %H:%M')}", "", f"`{command}`", ""]
    lines += ["| " + " | ".join(summary) + " |", "|" + "---|" * len(summary), "| " + " | ".join(str(v) for v in summary.values()) + " |", ""]
    for verdict in ("survived", "uncovered", "error", "timeout", "killed", "equivalent"):
        chosen = [r for r in results if r.verdict == verdict]
        if not chosen:
            continue
        lines += [f"## {verdict} ({len(chosen)})", "", "| mutant | where | change | tests run | detail |", "|---|---|---|---|---|"]
        for r in chosen:
            tests = ", ".join(t.split("/")[-1] for t in r.tests) if verdict != "killed" else str(r.killed_by)
            change = r.change.replace("|", "\\|")
            detail = r.detail.replace("|", "\\|").replace("\n", " ")[:160]
            lines.append(f"| `{r.id}` | {r.location} | `{change}` | {len(r.tests)} of {r.covering}: {tests} | {detail} |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))


def make_sample(results_json: Path, size: int) -> int:
    """bench/mutants-sample.toml: ``size`` killed mutants, the quickest to kill, one
    operator and function at a time so the sample spreads; each with its killing test."""
    data = json.loads(results_json.read_text())
    killed = [r for r in data["results"] if r["verdict"] == "killed" and r["killed_by"] and not r["detail"].startswith("crash")]
    killed.sort(key=lambda r: (r["seconds"], r["id"]))
    chosen: list[dict[str, object]] = []
    seen: set[tuple[str, str]] = set()
    for strict in (True, False):
        for r in killed:
            where = (r["id"].rsplit(":", 2)[0], r["operator"])
            if len(chosen) >= size or r in chosen or (strict and where in seen):
                continue
            seen.add(where)
            chosen.append(r)
    lines = [
        "# The CI sample of bench/mutate.py (tests/meta/test_mutants_sample.py): mutants the",
        "# suites kill, each with the test that killed it. Picked from a run by",
        f"# `bench/mutate.py --make-sample {results_json.name}` ({data['command']}).",
        "# Every one must stay killed. Pick again when a mutant's code changed (its id is gone).",
        "",
    ]
    for r in sorted(chosen, key=lambda r: str(r["id"])):
        lines += [
            "[[mutant]]",
            f"id = {json.dumps(r['id'])}",
            f"where = {json.dumps(r['location'])}",
            f"change = {json.dumps(r['change'])}",
            f"tests = [{json.dumps(r['killed_by'])}]",
            "",
        ]
    SAMPLE.write_text("\n".join(lines))
    print(f"{len(chosen)} mutants -> {SAMPLE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every mutant in scope")
    which.add_argument("--limit", type=int, help="a deterministic spread of N mutants in scope")
    which.add_argument("--ids", nargs="+", help="these mutants")
    which.add_argument("--sample", action="store_true", help="the fixed CI sample (bench/mutants-sample.toml)")
    parser.add_argument("--modules", default=",".join(DEFAULT_MODULES), help="comma-separated short module names")
    parser.add_argument("--all-variants", action="store_true", help="all four replacements of every constant")
    parser.add_argument(
        "--max-test-seconds", type=float, default=90.0,
        help="per mutant, run the quickest covering tests up to this much traced time (0: all)",
    )  # fmt: skip
    parser.add_argument(
        "--second-look", action="store_true",
        help="a survivor of the capped tests gets one more budget of its remaining covering tests",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests; run nothing")
    parser.add_argument("--trace", action="store_true", help="take the coverage again first")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "hil" / "mutate")
    parser.add_argument("--make-sample", type=Path, metavar="RESULTS_JSON", help="pick the CI sample from a run's results.json")
    parser.add_argument("--sample-size", type=int, default=20)
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="mutants judged side by side, each on its own virtual rig (2 on a 2-core machine)",
    )  # fmt: skip
    parser.add_argument("--require-killed", action="store_true", help="exit 1 unless every mutant run was killed")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra arguments for the coverage run")
    args = parser.parse_args(argv)
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.make_sample is not None:
        return make_sample(args.make_sample, args.sample_size)

    modules = [full_module(m.strip()) for m in args.modules.split(",") if m.strip()]
    sample: dict[str, list[str]] = {}
    if args.sample:
        sample = load_sample()
        modules = sorted({full_module(i.split(":", 1)[0]) for i in sample})
    mutants = generate(modules, all_variants=args.all_variants or bool(args.ids) or args.sample)
    by_id = {m.id: m for m in mutants}
    if args.sample or args.ids:
        wanted = list(sample) if args.sample else args.ids
        missing = [i for i in wanted if i not in by_id]
        if missing:
            print(f"mutate: no such mutant (its code changed; regenerate the list): {', '.join(missing)}", file=sys.stderr)
            return 2
        mutants = [by_id[i] for i in wanted]
    elif args.limit is not None:
        mutants = spread(mutants, args.limit)
    elif not (args.all or args.list):
        parser.error("say which mutants: --all, --limit N, --ids ..., --sample (or --list)")

    coverage: Coverage | None = None
    if not args.sample:
        path = work / "coverage.json"
        if args.trace or not path.exists():
            run_trace(work, args.pytest_args)
        coverage = Coverage.load(path)
    uses = name_uses()
    spans = function_spans()
    equivalents = load_equivalents()
    killers: Counter[tuple[str, str]] = Counter()

    def tests_of(m: Mutant) -> list[str]:
        if args.sample:
            return sample[m.id]
        ranked = ranked_tests(m)
        return coverage.capped(ranked, args.max_test_seconds) if coverage and args.max_test_seconds > 0 else ranked

    def ranked_tests(m: Mutant) -> list[str]:
        assert coverage is not None
        tests = coverage.tests_for(m, uses)
        # Likely killers first (with -x the first failure ends the run, and the time cap
        # keeps the first tests): those that killed mutants of the same function, then
        # of the module, earlier in this run; then those that exercise the function most
        # specifically; then the quickest.
        weights = coverage.affinity(m, spans)
        tests.sort(
            key=lambda t: (
                -killers[(m.module + ":" + m.qualname, t)],
                -killers[(m.module, t)],
                -round(weights.get(t, 0.0), 3),
            )
        )
        return tests

    def covering(m: Mutant) -> int:
        return len(sample.get(m.id, [])) if coverage is None else len(coverage.tests_for(m, uses))

    def expected(tests: list[str]) -> float:
        return coverage.duration(tests) if coverage is not None else 20.0 * len(tests)

    if args.list:
        for m in mutants:
            tests = tests_of(m)
            print(f"{m.id}\t{m.location}\t{m.describe()}\t{len(tests)} of {covering(m)} tests, {expected(tests):.0f} s")
        print(f"{len(mutants)} mutants", file=sys.stderr)
        return 0

    command = "bench/mutate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{len(mutants)} mutants" + (f"; coverage of {coverage.taken}" if coverage else ""), flush=True)
    started = time.monotonic()
    out = work / "runs" / time.strftime("%Y%m%d-%H%M%S")
    results: list[Result] = []
    done = 0

    def judge(m: Mutant, slot: Path) -> tuple[Result, list[str]]:
        tests = tests_of(m)
        if m.id in equivalents:
            result = Result(m.id, m.location, m.describe(), m.operator, "equivalent", [], detail=equivalents[m.id])
        elif not tests:
            result = Result(m.id, m.location, m.describe(), m.operator, "uncovered", [], detail="no test runs this line")
        else:
            result = run_mutant(m, tests, expected(tests), work, slot)
            if result.verdict == "error" and not STOPPING.is_set():
                # No verdict (the rig, or a tree others are editing, failed): once more.
                time.sleep(10)
                result = run_mutant(m, tests, expected(tests), work, slot)
            if result.verdict == "survived" and args.second_look and coverage is not None:
                # The budget kept only the likeliest covering tests; before calling it a
                # survivor, the next budget's worth of the ones left (a metrics task that
                # never starts shows only to the test that waits for metrics).
                rest = coverage.capped([t for t in ranked_tests(m) if t not in tests], args.max_test_seconds)
                if rest:
                    again = run_mutant(m, rest, expected(rest), work, slot)
                    if again.verdict != "error":
                        again.seconds += result.seconds
                        result, tests = again, tests + rest
                        result.tests = tests
        result.covering = covering(m)
        return result, tests

    def record(m: Mutant, result: Result, tests: list[str]) -> None:
        nonlocal done
        done += 1
        results.append(result)
        if result.verdict == "killed" and result.killed_by:
            killers[(m.module + ":" + m.qualname, result.killed_by)] += 1
            killers[(m.module, result.killed_by)] += 1
        who = f" by {result.killed_by}" if result.killed_by and result.verdict == "killed" else ""
        print(
            f"[{done}/{len(mutants)}] {result.verdict:9} {result.seconds:6.1f}s {m.location} {m.id} "
            f"`{m.describe()[:80]}` ({len(tests)} tests){who}",
            flush=True,
        )
        # Written after every mutant: a run stopped early (Ctrl-C) keeps what it judged.
        report(results, summarise(results, time.monotonic() - started), out, command)

    # Jobs run mutants side by side, each in its own slot (run dir, boards' cache) on its
    # own virtual rig: a mutant's run is mostly device waits, so two jobs on two cores
    # nearly halve the wall time. The likeliest-killer ordering learns from finished ones.
    slots = [work / f"slot-{k}" for k in range(args.jobs)] if args.jobs > 1 else [work]
    pending = list(mutants)
    try:
        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            running: dict[Future[tuple[Result, list[str]]], tuple[Mutant, Path]] = {}
            while pending or running:
                free = [slot for slot in slots if slot not in {s for _, s in running.values()}]
                while pending and free:
                    m, slot = pending.pop(0), free.pop(0)
                    running[pool.submit(judge, m, slot)] = (m, slot)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    m, _slot = running.pop(future)
                    result, tests = future.result()
                    record(m, result, tests)
    except KeyboardInterrupt:
        STOPPING.set()
        for proc in list(RUNNING):
            _stop(proc)
        print(f"stopped after {len(results)} of {len(mutants)} mutants", flush=True)
    summary = summarise(results, time.monotonic() - started)
    report(results, summary, out, command)
    print(json.dumps(summary))
    for r in results:
        if r.verdict in ("survived", "uncovered"):
            ran = f"{len(r.tests)} of {r.covering} covering tests run: {', '.join(r.tests) or 'none'}"
            print(f"SURVIVED {r.location} {r.id}: {r.change} [{r.verdict}; {ran}]")
    print(f"results: {out / 'results.md'}")
    if args.require_killed and any(r.verdict not in ("killed", "timeout", "equivalent") for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
