"""The Steel program runtime (DEVICE_CONTRACT §9): reader, evaluator, budgets, host, deploy gate."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hil.sim.firmware.programs import (
    DEFAULT_BUDGET,
    MAX_NESTING,
    MAX_PROGRAM_BYTES,
    Budget,
    Deployment,
    Expr,
    JsonValue,
    ProgramError,
    Rejection,
    Symbol,
    format_expr,
    parse,
    parse_deployment,
    run_program,
)

# --------------------------------------------------------------------------------------
# Helpers


@dataclass
class FakeHost:
    readings: dict[str, float] = field(
        default_factory=lambda: {"temperature": 21.5, "humidity": 40.0, "pressure": 1013.25}
    )
    leds: list[bool] = field(default_factory=list)
    published: list[tuple[str, JsonValue]] = field(default_factory=list)
    sleeps: list[int] = field(default_factory=list)

    def sensor(self, quantity: str) -> float:
        return self.readings[quantity]

    def led(self, on: bool) -> None:
        self.leds.append(on)

    def publish(self, suffix: str, value: JsonValue) -> None:
        self.published.append((suffix, value))

    async def sleep(self, ms: int) -> None:
        self.sleeps.append(ms)
        await asyncio.sleep(0)


def run(source: str, host: FakeHost | None = None, budget: Budget = DEFAULT_BUDGET) -> JsonValue:
    return asyncio.run(run_program(parse(source), host or FakeHost(), budget))


def fails(
    source: str, kind: str, host: FakeHost | None = None, budget: Budget = DEFAULT_BUDGET
) -> ProgramError:
    with pytest.raises(ProgramError) as info:
        run(source, host, budget)
    assert info.value.kind == kind, f"{info.value.kind}: {info.value}"
    return info.value


def same(a: object, b: object) -> bool:
    """Equality that also tells 1 from 1.0 from #t, and 0.0 from -0.0."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b) or a != b:
        return False
    return not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b)  # type: ignore[arg-type]


def src(value: int | float) -> str:
    return format_expr(value)


# --------------------------------------------------------------------------------------
# Reader


symbols = st.one_of(
    st.from_regex(r"[a-zA-Z!$%&*/:<=>?^_~][a-zA-Z0-9!$%&*/:<=>?^_~+.@-]{0,8}", fullmatch=True),
    st.sampled_from(["+", "-", "...", "->x", "-a", "set!", "if", "quote", "a.b"]),
).map(Symbol)
atoms = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(codec="utf-8"), max_size=12),
    symbols,
)
data: st.SearchStrategy[Expr] = st.recursive(
    atoms, lambda children: st.lists(children, max_size=5).map(tuple), max_leaves=25
)
QUOTE = Symbol("quote")


@given(st.lists(data, min_size=1, max_size=4))
def test_written_data_reads_back_exactly(items: list[Expr]) -> None:
    text = "\n; a comment between data\n".join("'" + format_expr(item) for item in items)
    program = parse(text)
    assert same(program, tuple((QUOTE, item) for item in items))


def test_reader_subset() -> None:
    program = parse(
        """
        ; a comment
        (define (f x) 'temperature)   ; trailing comment
        "tab\\there \\"quoted\\" back\\\\slash\\nnewline"
        -12 +7 3.5 -.5 1e3 #t #f #true #false (quote x) '(1 (2 "s"))
        """
    )
    f, x, temp = Symbol("f"), Symbol("x"), Symbol("temperature")
    expected = (
        (Symbol("define"), (f, x), (QUOTE, temp)),
        'tab\there "quoted" back\\slash\nnewline',
        -12, 7, 3.5, -0.5, 1000.0, True, False, True, False,
        (QUOTE, x),
        (QUOTE, (1, (2, "s"))),
    )  # fmt: skip
    assert same(program, expected)


@pytest.mark.parametrize(
    ("source", "line", "column", "fragment"),
    [
        ("(+ 1 2", 1, 1, "'(' is never closed"),
        ("(define (f)\n  (+ 1 2)", 1, 1, "never closed"),
        ("(a (b (c", 1, 7, "never closed"),
        ("(+ 1 2))", 1, 8, "unexpected ')'"),
        (")", 1, 1, "unexpected ')'"),
        ("(define x 1)\n  (foo 1x)", 2, 8, "bad number '1x'"),
        ('(display "abc)', 1, 10, "string is never closed"),
        ('"a\\qb"', 1, 3, "unknown string escape"),
        ('"line one\nline two" )', 2, 11, "unexpected ')'"),
        ("#q", 1, 1, "bad token '#q'"),
        ("(a . b)", 1, 4, "dotted pairs"),
        ("(foo [1])", 1, 6, "'[' cannot appear in a symbol"),
        ("(x\u00a0y é)", 1, 6, "'é' cannot appear"),
        ("'", 1, 1, "quote (') must be followed by a datum"),
        ("(')", 1, 2, "quote (') must be followed by a datum"),
        ("1e999", 1, 1, "out of range"),
        ("(" * (MAX_NESTING + 1), 1, MAX_NESTING + 1, "nested deeper"),
        ("'" * (MAX_NESTING + 1) + "x", 1, MAX_NESTING + 1, "nested deeper"),
        # syntax of special forms, checked by parse too
        ("(if)", 1, 1, "if takes a test"),
        ("\n  (+ 1 (if 1 2 3 4))", 2, 8, "if takes a test"),
        ("(define)", 1, 1, "define needs a name"),
        ("(define 1 2)", 1, 1, "1 is not a variable name"),
        ("(define x 1 2)", 1, 1, "exactly one value"),
        ("(define (f))", 1, 1, "define needs"),
        ("(f (define x 1))", 1, 4, "only allowed at the top level or in a body"),
        ("(lambda (x x) x)", 1, 1, "parameter x appears twice"),
        ("(lambda (x))", 1, 1, "lambda needs parameters and a body"),
        ("(let ((x)) x)", 1, 7, "each binding must be (name value)"),
        ("(let ((x 1) (x 2)) x)", 1, 13, "x is bound twice"),
        ("(let ((if 1)) 2)", 1, 7, "cannot bind if"),
        ("(set! 1 2)", 1, 1, "not a variable name"),
        ("(quote)", 1, 1, "quote takes exactly one datum"),
        ("(+ 1 ())", 1, 6, "empty combination"),
        ("(list if)", 1, 1, "if is a special form, not a value"),
        ("(cond)", 1, 1, "at least one clause"),
        ("(cond (else 1) (#t 2))", 1, 7, "else must be the last clause"),
        ("(cond (1 => car))", 1, 7, "=> clauses are not supported"),
    ],
)
def test_parse_errors_say_where(source: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(ProgramError) as info:
        parse(source)
    error = info.value
    assert error.kind == "parse"
    assert fragment in error.message, error.message
    assert (error.line, error.column) == (line, column), str(error)
    assert str(error).startswith(f"line {line}, column {column}: ")


@pytest.mark.parametrize("source", ["", "   \n\t", "; nothing but a comment\n;; and another"])
def test_empty_program_is_a_parse_error(source: str) -> None:
    with pytest.raises(ProgramError, match="empty program") as info:
        parse(source)
    assert info.value.kind == "parse"


def test_hand_built_programs_are_checked_too() -> None:
    deep: Expr = 1
    for _ in range(1000):
        deep = (Symbol("list"), deep)
    for program in [(), (deep,), ((Symbol("if"),),), (float("inf"),)]:
        with pytest.raises(ProgramError) as info:
            asyncio.run(run_program(program, FakeHost()))
        assert info.value.kind == "parse"


def test_format_expr_refuses_what_cannot_round_trip() -> None:
    unwritable: list[Expr] = [Symbol("a b"), Symbol("1x"), Symbol(""), float("nan")]
    for bad in unwritable:
        with pytest.raises(ValueError):
            format_expr(bad)


# --------------------------------------------------------------------------------------
# Arithmetic against Python's own

ints = st.integers(min_value=-(10**30), max_value=10**30)
floats = st.floats(min_value=-1e100, max_value=1e100, allow_nan=False)
numbers = ints | floats
FOLDS: dict[str, Callable[[int | float, int | float], int | float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}


def fold(op: str, args: list[int | float]) -> int | float:
    """Python's own answer for (op args...): a left fold, or negation for a lone `-`."""
    if op == "-" and len(args) == 1:
        return -args[0]
    return functools.reduce(FOLDS[op], args)


@settings(max_examples=150, deadline=None)
@given(op=st.sampled_from(sorted(FOLDS)), args=st.lists(numbers, min_size=1, max_size=5))
@example(op="+", args=[-0.0])  # found by CI: summing from 0 turned -0.0 into 0.0
def test_add_subtract_multiply_match_python(op: str, args: list[int | float]) -> None:
    expected = fold(op, args)
    source = f"({op} {' '.join(map(src, args))})"
    if isinstance(expected, float) and not math.isfinite(expected):
        assert "overflow" in fails(source, "runtime").message
    else:
        assert same(run(source), expected)


@settings(max_examples=150, deadline=None)
@given(a=numbers, b=numbers)
def test_division_matches_python(a: int | float, b: int | float) -> None:
    source = f"(/ {src(a)} {src(b)})"
    if b == 0:
        assert "division by zero" in fails(source, "runtime").message
    elif isinstance(a, int) and isinstance(b, int) and a % b == 0:
        assert same(run(source), a // b)  # exact division stays an integer
    else:
        expected = a / b
        if math.isfinite(expected):
            assert same(run(source), expected)
        else:
            fails(source, "runtime")


@settings(max_examples=150, deadline=None)
@given(
    a=st.integers(min_value=-(10**12), max_value=10**12),
    b=st.integers(min_value=-(10**12), max_value=10**12).filter(bool),
)
def test_integer_division_matches_python(a: int, b: int) -> None:
    result = run(f"(list (quotient {a} {b}) (remainder {a} {b}) (modulo {a} {b}))")
    assert result == [math.trunc(a / b), int(math.fmod(a, b)), a % b]


@settings(max_examples=100, deadline=None)
@given(a=numbers, b=numbers)
def test_comparisons_match_python(a: int | float, b: int | float) -> None:
    ops = {"=": operator.eq, "<": operator.lt, ">": operator.gt, "<=": operator.le}
    ops[">="] = operator.ge
    calls = " ".join(f"({name} {src(a)} {src(b)})" for name in ops)
    assert run(f"(list {calls})") == [op(a, b) for op in ops.values()]


@settings(max_examples=100, deadline=None)
@given(args=st.lists(numbers, min_size=1, max_size=5))
def test_min_max_abs_match_python(args: list[int | float]) -> None:
    inexact = any(isinstance(a, float) for a in args)
    text = " ".join(map(src, args))
    result = run(f"(list (min {text}) (max {text}))")
    assert isinstance(result, list)
    low, high = result
    assert same(low, float(min(args)) if inexact else min(args))
    assert same(high, float(max(args)) if inexact else max(args))
    assert same(run(f"(abs {src(args[0])})"), abs(args[0]))


Tree = tuple[str, int | float]  # source text and the value Python computes for it


def apply_tree(op: str, children: list[Tree]) -> Tree:
    text = f"({op} {' '.join(child_text for child_text, _ in children)})"
    return text, fold(op, [value for _, value in children])


def integer_trees(leaf: st.SearchStrategy[int]) -> st.SearchStrategy[Tree]:
    def combine(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
        ops = st.sampled_from(sorted(FOLDS))
        return st.builds(apply_tree, ops, st.lists(children, min_size=1, max_size=3))

    leaves: st.SearchStrategy[Tree] = leaf.map(lambda n: (str(n), n))
    return st.recursive(leaves, combine, max_leaves=20)


@settings(max_examples=100, deadline=None)
@given(integer_trees(st.integers(min_value=-(10**6), max_value=10**6)))
def test_nested_integer_expressions_are_exact(tree: Tree) -> None:
    text, expected = tree
    assert same(run(text), expected)


def test_arithmetic_edges() -> None:
    assert run("(list (+) (*) (- 5) (/ 2) (/ 7 2) (/ 6 3) (/ 1.0 4))") == [
        0,
        1,
        -5,
        0.5,
        3.5,
        2,
        0.25,
    ]
    assert same(run("(/ 6 3)"), 2)
    assert same(run("(* 2 0.5)"), 1.0)
    assert run("(list (< 1 2 3) (< 1 3 2) (= 1 1.0) (>= 3 3 2))") == [True, False, True, True]
    assert "floating-point overflow" in fails("(* 1e200 1e200)", "runtime").message
    assert "division by zero" in fails("(/ 1.0 0.0)", "runtime").message
    assert "division by zero" in fails("(modulo 5 0)", "runtime").message
    assert "number too large" in fails(f"(+ {10**400} 1.0)", "runtime").message


# --------------------------------------------------------------------------------------
# The language


def test_factorial_and_fibonacci() -> None:
    fact = "(define (fact n) (if (= n 0) 1 (* n (fact (- n 1)))))"
    assert run(f"{fact} (fact 20)") == math.factorial(20)
    assert run(f"{fact} (fact 30)") == math.factorial(30)  # beyond 64 bits, still exact
    fib = "(define (fib n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2)))))"
    assert run(f"{fib} (fib 15)") == 610


def test_closures_keep_their_own_state() -> None:
    source = """
    (define (make-counter)
      (let ((count 0))
        (lambda () (set! count (+ count 1)) count)))
    (define a (make-counter))
    (define b (make-counter))
    (a) (a) (b)
    (list (a) (b))
    """
    assert run(source) == [3, 2]


def test_scope_let_forms_and_higher_order() -> None:
    assert run("(define x 1) (let ((x 2) (y x)) (list x y))") == [2, 1]
    assert run("(let* ((x 1) (y (+ x 1)) (x (* y 10))) (list x y))") == [20, 2]
    assert run("(let* () 5)") == 5
    source = """
    (define (map f xs) (if (null? xs) '() (cons (f (car xs)) (map f (cdr xs)))))
    (define (add n) (lambda (x) (+ x n)))
    (map (add 10) '(1 2 3))
    """
    assert run(source) == [11, 12, 13]
    # Named let: a loop; its inits see the outer `n`, not the loop's own names.
    assert (
        run("(define n 5) (let loop ((n n) (acc 1)) (if (= n 0) acc (loop (- n 1) (* acc n))))")
        == 120
    )
    assert run("((lambda args args) 1 2 3)") == [1, 2, 3]
    assert run("(define (f) (define y 2) (* y 3)) (f)") == 6


def test_control_forms() -> None:
    host = FakeHost()
    assert run("(and 1 #f (led 'on))", host) is False
    assert run("(or #f 0 (led 'on))", host) == 0  # 0 is true: only #f is false
    assert host.leds == []
    assert run("(list (and) (or) (and 1 2) (or #f #f))") == [True, False, 2, False]
    assert run("(if #f 1)") is None
    assert run("(begin 1 2 3)") == 3
    assert run("(begin)") is None
    cond = "(define (sign n) (cond ((< n 0) 'negative) ((= n 0) 'zero) (else 'positive)))"
    assert run(f"{cond} (list (sign -3) (sign 0) (sign 4))") == ["negative", "zero", "positive"]
    assert run("(cond (#f 1) (7))") == 7
    assert run("(cond (#f 1))") is None


def test_results_become_json() -> None:
    assert run("(define x 1)") is None
    assert run("'temperature") == "temperature"
    assert run("car") == "#<procedure>"
    assert run("(lambda (x) x)") == "#<procedure>"
    assert run("(list 1 2.5 \"s\" #t 'sym '() (list 1 (list 2)))") == [
        1, 2.5, "s", True, "sym", [], [1, [2]],
    ]  # fmt: skip
    assert run("(cons 1 2)") == "(1 . 2)"  # no array form for an improper list
    assert json.loads(json.dumps(run('(list 1 "x" \'y)'))) == [1, "x", "y"]


def test_lists_strings_and_equality() -> None:
    assert run("(list (car '(1 2)) (cdr '(1 2)) (null? '()) (null? '(1)) (length '(1 2 3)))") == [
        1, [2], True, False, 3,
    ]  # fmt: skip
    assert (
        run('(string-append "t=" (number->string 21.5) " n=" (number->string 7))') == "t=21.5 n=7"
    )
    assert run("(symbol->string 'humidity)") == "humidity"
    assert run("(list (eq? 'a 'a) (eq? 1 1.0) (equal? '(1 (2 \"x\")) (list 1 (list 2 \"x\"))))") == [
        True, False, True,
    ]  # fmt: skip
    assert run("(not 0)") is False
    assert run("(not #f)") is True


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("(+ x 1)", "unbound variable: x"),
        ("(set! nope 1)", "set!: unbound variable: nope"),
        ('(+ 1 "a")', '+: expected a number, got "a"'),
        ("(+ 1 #t)", "+: expected a number, got #t"),
        ("(car 5)", "car: expected a pair, got 5"),
        ("(car '())", "car: expected a pair, got ()"),
        ("(quotient 1.5 2)", "quotient: expected an integer"),
        ("(/ 1 0)", "/: division by zero"),
        ("(quotient 1 0)", "quotient: division by zero"),
        ("((lambda (x) x))", "anonymous procedure: expects 1 argument, got 0"),
        ("(define (f a b) a) (f 1)", "f: expects 2 arguments, got 1"),
        ("(define g (lambda (a) a)) (g 1 2)", "g: expects 1 argument, got 2"),
        ("(car)", "car: expects 1 argument, got 0"),
        ("(< 1)", "<: expects at least 2 arguments, got 1"),
        ("(5 1)", "not a procedure: 5"),
        ("(length (cons 1 2))", "length: expected a proper list"),
        ('(string-append "a" \'b)', "string-append: expected a string, got b"),
        ("(sensor 'wind)", "sensor: unknown quantity 'wind"),
        ('(sensor "temperature")', "sensor: expected a quoted symbol"),
        ("(led 'blink)", "led: expected 'on or 'off"),
        ('(publish "a/+/b" 1)', "publish: topic suffix 'a/+/b'"),
        ('(publish "a//b" 1)', "empty levels"),
        ('(publish "" 1)', "publish: topic suffix"),
        ('(publish "status" 1)', "reserved"),
        ("(publish 'x 1)", "publish: expected a string"),
        ("(sleep -1)", "sleep: expected a whole number of milliseconds"),
        ("(sleep 1.5)", "sleep: expected a whole number"),
    ],
)
def test_runtime_errors(source: str, fragment: str) -> None:
    error = fails(source, "runtime")
    assert fragment in error.message, error.message


def test_runtime_errors_point_at_the_form() -> None:
    error = fails("(define (f x)\n  (car x))\n(f 5)", "runtime")
    assert (error.line, error.column) == (2, 3)
    assert str(error) == "line 2, column 3: car: expected a pair, got 5"


def test_deeply_nested_values_never_overflow_the_python_stack() -> None:
    nest = "(define (nest n acc) (if (= n 0) acc (nest (- n 1) (list acc))))"
    assert run(f"{nest} (nest 3 '())") == [[[[]]]]
    assert "nested deeper" in fails(f"{nest} (nest 1000 '())", "runtime").message
    error = fails(f"{nest} (+ 1 (nest 1000 '()))", "runtime")
    assert error.message.startswith("+: expected a number, got ((((")


# --------------------------------------------------------------------------------------
# Host procedures


def test_host_calls() -> None:
    host = FakeHost(readings={"temperature": 23.25, "humidity": 55.0, "pressure": 990.5})
    source = """
    (led 'on)
    (publish "reading" (list (sensor 'temperature) (sensor 'humidity) (sensor 'pressure)))
    (publish "alerts/hot" (> (sensor 'temperature) 23))
    (publish "nothing" (led 'off))
    (sensor 'pressure)
    """
    assert run(source, host) == 990.5
    assert host.leds == [True, False]
    assert host.published == [
        ("reading", [23.25, 55.0, 990.5]),
        ("alerts/hot", True),
        ("nothing", None),
    ]


def test_host_failures_become_runtime_errors() -> None:
    class Broken(FakeHost):
        def sensor(self, quantity: str) -> float:
            raise OSError("i2c NACK")

    error = fails("(sensor 'temperature)", "runtime", Broken())
    assert error.message == "sensor: OSError: i2c NACK"
    assert isinstance(error.__cause__, OSError)

    class Refusing(FakeHost):
        def publish(self, suffix: str, value: JsonValue) -> None:
            raise ProgramError("runtime", "publish: offline queue full")

    assert fails('(publish "x" 1)', "runtime", Refusing()).message == "publish: offline queue full"
    wet: dict[str, float] = json.loads('{"humidity": "wet"}')  # a host that breaks its type
    assert "not a number" in fails("(sensor 'humidity)", "runtime", FakeHost(wet)).message
    assert (
        "nan"
        in fails("(sensor 'humidity)", "runtime", FakeHost(readings={"humidity": math.nan})).message
    )


def test_sleep_awaits_the_host() -> None:
    class Gated(FakeHost):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def sleep(self, ms: int) -> None:
            self.sleeps.append(ms)
            await self.gate.wait()

    async def main() -> None:
        host = Gated()
        task = asyncio.create_task(
            run_program(parse("(led 'on) (sleep 10) (led 'off) 'done"), host)
        )
        for _ in range(20):
            await asyncio.sleep(0)
        assert (host.leds, host.sleeps, task.done()) == ([True], [10], False)
        host.gate.set()
        assert await task == "done"
        assert host.leds == [True, False]

    asyncio.run(main())
    host = FakeHost()
    assert run("(sleep 10) (sleep 0) 1", host) == 1
    assert host.sleeps == [10, 0]


# --------------------------------------------------------------------------------------
# Budgets and sharing the CPU

DEEP = "(define (f n) (if (= n 0) 0 (+ 1 (f (- n 1)))))"


@pytest.mark.parametrize("source", ["(define (f) (f)) (f)", "(let loop () (loop))"])
def test_endless_loop_exhausts_the_step_budget(source: str) -> None:
    assert "step budget of 100000 steps" in fails(source, "step_budget").message
    fails(source, "step_budget", budget=Budget(steps=500))


def test_deep_recursion_hits_a_budget_never_the_python_stack() -> None:
    assert run(f"{DEEP} (f 500)") == 500
    roomy = Budget(steps=100_000, memory_bytes=10**9)
    fails(f"{DEEP} (f 1000000)", "step_budget", budget=roomy)
    # Every pending call holds its frame: with the default 64 KiB that runs out first.
    assert "memory budget of 65536 bytes" in fails(f"{DEEP} (f 1000000)", "memory_budget").message


def test_step_budget_is_a_limit_not_a_suggestion() -> None:
    fails("(+ 1 2)", "step_budget", budget=Budget(steps=1))
    assert run("(+ 1 2)", budget=Budget(steps=100)) == 3
    needed = next(n for n in range(1, 100) if _completes("(+ 1 (* 2 3))", Budget(steps=n)))
    assert _completes("(+ 1 (* 2 3))", Budget(steps=needed + 1))
    fails("(+ 1 (* 2 3))", "step_budget", budget=Budget(steps=needed - 1))


def _completes(source: str, budget: Budget) -> bool:
    try:
        run(source, budget=budget)
    except ProgramError as error:
        assert error.kind == "step_budget"
        return False
    return True


BUILD = "(define (build n acc) (if (= n 0) acc (build (- n 1) (cons n acc))))"
MANY_STEPS = Budget(steps=10_000_000)


def test_memory_budget_stops_a_growing_list() -> None:
    assert run(f"{BUILD} (length (build 1000 '()))") == 1000
    fails(f"{BUILD} (build 100000 '())", "memory_budget", budget=MANY_STEPS)
    bigger = Budget(steps=10_000_000, memory_bytes=1_000_000)
    assert run(f"{BUILD} (length (build 20000 '()))", budget=bigger) == 20000


def test_memory_budget_counts_what_is_live_not_what_was_ever_allocated() -> None:
    # ~3000 iterations, each allocating lists, strings and frames that die at once:
    # far more than 64 KiB in total, never much of it at the same time.
    churn = """
    (let loop ((i 0))
      (if (< i 3000)
          (begin (list 1 2 3 4 5 6 7 8) (string-append "abc" "def") (loop (+ i 1)))
          i))
    """
    assert run(churn, budget=MANY_STEPS) == 3000


def test_memory_budget_weighs_strings_and_big_integers() -> None:
    fails('(define (grow s) (grow (string-append s s))) (grow "x")', "memory_budget")
    fails("(define (square x) (square (* x x))) (square 3)", "memory_budget")
    fails(f"(* {'9' * 2000} {'9' * 2000})", "memory_budget", budget=Budget(memory_bytes=512))


def test_a_busy_program_never_starves_other_tasks() -> None:
    async def main() -> tuple[int, ProgramError]:
        ticks = 0

        async def ticker() -> None:  # stands in for telemetry and the watchdog
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        try:
            await run_program(parse("(define (f) (f)) (f)"), FakeHost())
        except ProgramError as error:
            return ticks, error
        finally:
            task.cancel()
        raise AssertionError("an endless program completed")

    ticks, error = asyncio.run(main())
    assert error.kind == "step_budget"
    assert ticks >= 100_000 // 500 - 1  # one turn for the ticker every 500 steps


def test_a_running_program_can_be_cancelled() -> None:
    async def main() -> None:
        task = asyncio.create_task(
            run_program(parse("(define (f) (f)) (f)"), FakeHost(), Budget(steps=10**9))
        )
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_bad_run_parameters() -> None:
    with pytest.raises(ValueError, match="yield_every"):
        asyncio.run(run_program(parse("1"), FakeHost(), yield_every=0))
    with pytest.raises(ValueError):
        Budget(steps=-1)


# --------------------------------------------------------------------------------------
# Robustness: whatever the text, only ProgramError comes out

VOCABULARY = [
    "(", "(", "(", ")", ")", ")", "'", "define", "lambda", "let", "let*", "if", "begin", "set!",
    "and", "or", "cond", "else", "f", "x", "y", "1", "0", "-2.5", '"s"', "+", "-", "*", "/",
    "car", "cons", "list", "null?", "#t", "#f", "sensor", "'temperature", "led", "'on",
    "publish", "sleep", "string-append", "number->string", "equal?", "quotient",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=30))
def test_random_programs_fail_only_with_program_errors(tokens: list[str]) -> None:
    source = " ".join(tokens)
    try:
        run(source, budget=Budget(steps=2000, memory_bytes=4096))
    except ProgramError as error:
        assert error.kind in ("parse", "runtime", "step_budget", "memory_budget")


# --------------------------------------------------------------------------------------
# Deploy gate


def payload(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def deploy(name: str = "blink", source: str = "(led 'on)", sha256: str | None = None) -> bytes:
    digest = hashlib.sha256(source.encode()).hexdigest() if sha256 is None else sha256
    return payload(name=name, source=source, sha256=digest)


def test_a_good_deployment_is_accepted() -> None:
    source = '(define (avg) (/ (+ (sensor \'temperature) 1) 2))\n(publish "avg" (avg))'
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert parse_deployment(deploy("avg-temp_1", source)) == Deployment(
        "avg-temp_1", source, digest
    )
    upper = parse_deployment(deploy("x", source, digest.upper()))
    assert isinstance(upper, Deployment) and upper.sha256 == digest
    exactly = "1" + ";" * (MAX_PROGRAM_BYTES - 1)
    assert isinstance(parse_deployment(deploy(source=exactly)), Deployment)


SHA_OF_LED_ON = hashlib.sha256(b"(led 'on)").hexdigest()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "malformed JSON: Expecting property name"),
        (b"\xff\xfe", "malformed JSON: payload is not UTF-8"),
        (b"[" * 5000, "malformed JSON: nested too deeply"),
        (b"[1, 2]", "payload must be a JSON object"),
        (b'"text"', "payload must be a JSON object"),
        (payload(source="1", sha256=SHA_OF_LED_ON), "missing field(s): name"),
        (payload(name="a"), "missing field(s): source, sha256"),
        (payload(name="a", source="1", sha256="0" * 64, extra=1), "unknown field(s): extra"),
        (
            payload(name=7, source="1", sha256="0" * 64),
            "field 'name' must be a string, not a number",
        ),
        (
            payload(name="a", source=None, sha256="0" * 64),
            "field 'source' must be a string, not null",
        ),
        (
            payload(name="a", source="1", sha256=[1]),
            "field 'sha256' must be a string, not an array",
        ),
        (deploy(name=""), "name '' must be 1 to 32"),
        (deploy(name="has space"), "name 'has space' must be 1 to 32"),
        (deploy(name="a/b"), "must be 1 to 32 letters"),
        (deploy(name="x" * 33), "must be 1 to 32 letters"),
        (deploy(name="café"), "must be 1 to 32 letters"),
        (deploy(name="trailing\n"), "must be 1 to 32 letters"),
        (deploy(source="1" + ";" * MAX_PROGRAM_BYTES), "source too large: 8193 bytes"),
        (deploy(source="1;" + "é" * 4096), "source too large: 8194 bytes"),  # bytes, not characters
        (b'{"name": "a", "source": "\\ud800", "sha256": "00"}', "not valid Unicode"),
        (deploy(sha256="abc"), "sha256 must be 64 hexadecimal digits"),
        (deploy(sha256="g" * 64), "sha256 must be 64 hexadecimal digits"),
        (deploy(sha256="0" * 64), "hash mismatch"),
        (deploy(source="(led 'on"), "parse error: line 1, column 1: '(' is never closed"),
        (deploy(source="(if)"), "parse error: line 1, column 1: if takes a test"),
        (deploy(source="  ; nothing"), "parse error: empty program"),
        (b" " * (70 * 1024), "payload is 71680 bytes"),
    ],
)
def test_deployment_rejections(raw: bytes, reason: str) -> None:
    result = parse_deployment(raw)
    assert isinstance(result, Rejection), result
    assert reason in result.reason, result.reason


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (deploy(sha256="0" * 64), "blink"),  # a usable name: the refusal says which deployment
        (deploy(source="(led 'on"), "blink"),
        (deploy(source="1" + ";" * MAX_PROGRAM_BYTES), "blink"),
        (payload(name="blink", source="1"), "blink"),  # a field missing
        (b'{"name": "blink", "source": ', None),  # malformed JSON: no name to give
        (payload(name=7, source="1", sha256="0" * 64), None),
        (deploy(name="has space"), None),  # a name that is not one
    ],
)
def test_a_rejection_carries_the_deployments_usable_name(raw: bytes, name: str | None) -> None:
    result = parse_deployment(raw)
    assert isinstance(result, Rejection) and result.name == name, result


def test_hash_mismatch_names_both_hashes() -> None:
    result = parse_deployment(deploy(sha256="0" * 64))
    assert isinstance(result, Rejection)
    assert result.reason == f"hash mismatch: the source hashes to {SHA_OF_LED_ON}, not {'0' * 64}"


def test_the_unchecked_hash_defect_accepts_a_mismatch_but_still_checks_the_rest() -> None:
    # The `program_hash_unchecked` defect image's runtime: the digest of the source is kept.
    assert parse_deployment(deploy(sha256="0" * 64), check_hash=False) == Deployment("blink", "(led 'on)", SHA_OF_LED_ON)
    assert isinstance(parse_deployment(deploy(sha256="abc"), check_hash=False), Rejection)
    assert isinstance(parse_deployment(deploy(source="(led 'on", sha256="0" * 64), check_hash=False), Rejection)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(["name", "source", "sha256", "other"]),
            st.one_of(st.text(max_size=40), st.integers(), st.none()),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_the_deploy_gate_never_raises(raw: bytes) -> None:
    assert isinstance(parse_deployment(raw), Deployment | Rejection)
