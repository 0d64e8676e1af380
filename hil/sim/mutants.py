"""Mutation operators for the firmware model: small, realistic bugs, one per mutant.

``enumerate_mutants(source, module)`` lists every mutant of one module's source;
``mutate(source, module, mutant_id)`` returns that source's AST with exactly that one
change. Both walk the same parse in the same order, so a mutant found by the first is
the one the second applies (``bench/mutate.py`` lists, the board process applies).

Ids survive edits elsewhere in the file (others add defect branches while mutants are
run, so line numbers move): ``<module>:<qualname>:<operator>:<key>``, where ``key`` hashes
the node's own AST, the replacement and the node's ordinal among identical nodes of the
same function. An edit of the node itself gives it a new id, as it should.

What is not mutated, and why:
- defect branches (``if D.X in self.defects:`` bodies, the ``else`` of ``not in``): they
  are deliberate bugs of the curated images, dead code in the reference firmware;
- expressions that test a defect (``D.X``, ``self.defects``): flipping one switches a
  curated defect on, which the defect images already cover;
- the arguments of ``self.log(...)`` and f-string parts: log text, not behaviour;
- docstrings, annotations (never visited) and ``from __future__``.
"""

from __future__ import annotations

import ast
import copy
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# Comparison operators and the neighbour each one is swapped with.
_CMP_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
# Keyword arguments that are MQTT flags: a non-constant value is negated (``retain=retain``
# becomes ``retain=not retain``), so flags computed from defects are mutated too.
FLAG_KEYWORDS = frozenset({"retain", "clean_session"})
# Calls that only log to the console: their arguments are text. Dropping the whole call
# stays a mutant (tests wait for console lines).
_LOG_CALLS = frozenset({"log"})
_SWAP_CALLS = {"min": "max", "max": "min"}
_SWAP_METHODS = {"popleft": "pop", "appendleft": "append", "append": "appendleft"}

OPERATORS = ("const", "cmp", "bool", "not", "flip", "flag", "drop", "order")


@dataclass(frozen=True)
class Mutant:
    module: str  # dotted module name, e.g. hil.sim.firmware.reference
    qualname: str  # enclosing function or class, "<module>" at top level
    operator: str  # one of OPERATORS
    key: str
    line: int
    col: int
    end_line: int
    original: str  # source of the mutated node
    replacement: str  # what it becomes
    stmt_line: int  # first line of the enclosing statement
    # Module- or class-level names a constant mutant defines: its effect shows where the
    # name is used, not where it is defined (tests are chosen from those lines).
    defines: str | None = None
    # 0 for an operator's first replacement of a node; a constant has up to four (x2,
    # /2, +1, -1) and a budgeted run may take only the first.
    variant: int = 0

    @property
    def id(self) -> str:
        return f"{short_name(self.module)}:{self.qualname}:{self.operator}:{self.key}"

    @property
    def location(self) -> str:
        return f"{self.module.replace('.', '/')}.py:{self.line}"

    def describe(self) -> str:
        return f"{self.original} -> {self.replacement}"


def short_name(module: str) -> str:
    return module.rsplit(".", 1)[-1]


# A candidate: the mutant and how to apply it to the tree it was found in.
_Candidate = tuple[Mutant, Callable[[], None]]


def _is_defect_ref(node: ast.AST) -> bool:
    """``D.X`` (hil.device.defects imported as D) or ``self.defects`` anywhere in ``node``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute):
            if isinstance(sub.value, ast.Name) and sub.value.id == "D":
                return True
            if sub.attr == "defects":
                return True
    return False


def _membership(node: ast.AST) -> type[ast.cmpop] | None:
    """``In`` for ``<defect> in self.defects``, ``NotIn`` for ``not in``, else None."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and _is_defect_ref(node):
        op = type(node.ops[0])
        if op in (ast.In, ast.NotIn):
            return op
    return None


def _gates(test: ast.expr) -> tuple[bool, bool]:
    """Whether a condition's true branch, or its false branch, runs only with a defect.

    True branch: the test is ``D.X in defects`` or an ``and`` with such an operand.
    False branch: ``D.X not in defects`` or an ``or`` with such an operand.
    """
    operands: list[ast.expr] = [test]
    kind: type[ast.boolop] | None = None
    if isinstance(test, ast.BoolOp):
        operands, kind = test.values, type(test.op)
    positive = any(_membership(o) is ast.In for o in operands) and kind in (None, ast.And)
    negative = any(_membership(o) is ast.NotIn for o in operands) and kind in (None, ast.Or)
    return positive, negative


def _leaves_unless_defect(stmt: ast.stmt) -> bool:
    """``if D.X not in defects: raise`` (or return, continue, break): the statements after
    it in the same block run only on a defect image, like an ``if D.X in defects`` body."""
    if not isinstance(stmt, ast.If) or stmt.orelse or not _gates(stmt.test)[1] or _gates(stmt.test)[0]:
        return False
    return isinstance(stmt.body[-1], ast.Raise | ast.Return | ast.Continue | ast.Break)


class _Finder:
    def __init__(self, source: str, module: str) -> None:
        self.source = source
        self.module = module
        self.candidates: list[_Candidate] = []
        self._scope: list[str] = []
        self._stmt: ast.stmt | None = None
        self._ordinals: dict[tuple[str, str, str], int] = {}

    # -- recording ------------------------------------------------------------------
    def _add(
        self,
        operator: str,
        node: ast.AST,
        replacement: str,
        apply: Callable[[], None],
        *,
        defines: str | None = None,
        variant: int = 0,
    ) -> None:
        qualname = ".".join(self._scope) or "<module>"
        digest_of = f"{ast.dump(node)}|{operator}|{replacement}"
        slot = (qualname, operator, digest_of)
        ordinal = self._ordinals.get(slot, 0)
        self._ordinals[slot] = ordinal + 1
        key = hashlib.sha1(f"{digest_of}|{ordinal}".encode()).hexdigest()[:8]
        original = ast.get_source_segment(self.source, node) or ast.unparse(node)
        stmt = self._stmt
        self.candidates.append(
            (
                Mutant(
                    module=self.module,
                    qualname=qualname,
                    operator=operator,
                    key=key,
                    line=getattr(node, "lineno", 0),
                    col=getattr(node, "col_offset", 0),
                    end_line=_end_line(node),
                    original=" ".join(original.split()),
                    replacement=" ".join(replacement.split()),
                    stmt_line=stmt.lineno if stmt is not None else getattr(node, "lineno", 0),
                    defines=defines,
                    variant=variant,
                ),
                apply,
            )
        )

    # -- walking --------------------------------------------------------------------
    def visit_body(self, body: list[ast.stmt]) -> None:
        for index, stmt in enumerate(body):
            self.visit_stmt(body, index, stmt)
            if _leaves_unless_defect(stmt):
                return  # what follows runs only with a defect

    def visit_stmt(self, body: list[ast.stmt], index: int, stmt: ast.stmt) -> None:
        saved, self._stmt = self._stmt, stmt
        try:
            self._visit_stmt(body, index, stmt)
        finally:
            self._stmt = saved

    def _visit_stmt(self, body: list[ast.stmt], index: int, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return  # a docstring, or a bare constant
        if isinstance(stmt, ast.ImportFrom | ast.Import):
            return
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            for default in [*stmt.args.defaults, *(d for d in stmt.args.kw_defaults if d is not None)]:
                self.visit_expr(default)
            self._scope.append(stmt.name)
            self.visit_body(stmt.body)
            self._scope.pop()
            return
        if isinstance(stmt, ast.ClassDef):
            self._scope.append(stmt.name)
            self.visit_body(stmt.body)
            self._scope.pop()
            return
        if isinstance(stmt, ast.If | ast.While):
            positive, negative = _gates(stmt.test)
            if positive or negative:
                # A defect switch: its test is not mutated, nor the branch only a defect runs.
                if not positive:
                    self.visit_body(stmt.body)
                if not negative:
                    self.visit_body(stmt.orelse)
                return
            self.visit_expr(stmt.test)
            self.visit_body(stmt.body)
            self.visit_body(stmt.orelse)
            return
        if isinstance(stmt, ast.Expr):
            self._drop(body, index, stmt)
            self.visit_expr(stmt.value)
            return
        if isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self._visit_assigned(stmt.target, stmt.value)
            return
        if isinstance(stmt, ast.Assign):
            target = stmt.targets[0] if len(stmt.targets) == 1 else None
            self._visit_assigned(target, stmt.value)
            return
        if isinstance(stmt, ast.For | ast.AsyncFor):
            self._reverse_literal(stmt)
        # Everything else: visit the expressions and nested bodies it holds, in field order.
        for _name, value in ast.iter_fields(stmt):
            if isinstance(value, list) and value and all(isinstance(v, ast.stmt) for v in value):
                self.visit_body(value)
            elif isinstance(value, list):
                for item in value:
                    self._visit_any(item)
            else:
                self._visit_any(value)

    def _visit_any(self, value: object) -> None:
        if isinstance(value, ast.expr):
            self.visit_expr(value)
        elif isinstance(value, ast.ExceptHandler):
            saved_stmt = self._stmt
            self.visit_body(value.body)
            self._stmt = saved_stmt
        elif isinstance(value, ast.withitem):
            self.visit_expr(value.context_expr)
        elif isinstance(value, ast.match_case):
            self.visit_body(value.body)

    def _visit_assigned(self, target: ast.expr | None, value: ast.expr) -> None:
        # A module- or class-level constant: record the name it defines.
        defines = None
        if len(self._scope) <= 1 and isinstance(target, ast.Name):
            defines = target.id
        self._defines = defines
        try:
            self.visit_expr(value)
        finally:
            self._defines = None

    _defines: str | None = None

    def visit_expr(self, node: ast.expr) -> None:
        if isinstance(node, ast.JoinedStr):
            return  # f-strings: message text
        if isinstance(node, ast.Call) and _call_name(node) in _LOG_CALLS:
            return
        if isinstance(node, ast.Lambda):
            self.visit_expr(node.body)
            return
        if isinstance(node, ast.IfExp):
            positive, negative = _gates(node.test)
            if positive or negative:
                if not positive:
                    self.visit_expr(node.body)
                if not negative:
                    self.visit_expr(node.orelse)
                return
        self._operators(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.visit_expr(child)
            elif isinstance(child, ast.keyword):
                self.visit_expr(child.value)
            elif isinstance(child, ast.comprehension):
                self.visit_expr(child.iter)
                for cond in child.ifs:
                    self.visit_expr(cond)

    # -- operators ------------------------------------------------------------------
    def _operators(self, node: ast.expr) -> None:
        if isinstance(node, ast.Constant):
            self._constant(node)
        elif isinstance(node, ast.Compare) and not _is_defect_ref(node):
            self._compare(node)
        elif isinstance(node, ast.BoolOp):
            self._boolop(node)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and not _is_defect_ref(node):
            operand = node.operand
            self._add("not", node, ast.unparse(operand), lambda: _replace(node, operand))
        elif isinstance(node, ast.Call):
            self._call(node)

    def _constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self._add("flip", node, repr(not value), lambda: setattr(node, "value", not value), defines=self._defines)
            return
        if not isinstance(value, int | float):
            return
        seen = {value}
        half = value // 2 if isinstance(value, int) else value / 2
        for new in (value * 2, half, value + 1, value - 1):
            if new in seen:
                continue
            self._add("const", node, repr(new), _setter(node, new), defines=self._defines, variant=len(seen) - 1)
            seen.add(new)

    def _compare(self, node: ast.Compare) -> None:
        for index, op in enumerate(node.ops):
            swapped = _CMP_SWAP.get(type(op))
            if swapped is None:
                continue
            probe = copy.copy(node)
            probe.ops = [*node.ops]
            probe.ops[index] = swapped()
            self._add("cmp", node, ast.unparse(probe), _op_setter(node, index, swapped))

    def _boolop(self, node: ast.BoolOp) -> None:
        for index, operand in enumerate(node.values):
            if _is_defect_ref(operand):
                continue  # dropping a defect test would switch a curated defect on or off
            rest = [v for i, v in enumerate(node.values) if i != index]
            shown = ast.unparse(rest[0]) if len(rest) == 1 else ast.unparse(ast.BoolOp(op=node.op, values=rest))
            self._add("bool", node, shown, _bool_dropper(node, index))

    def _call(self, node: ast.Call) -> None:
        for keyword in node.keywords:
            if keyword.arg in FLAG_KEYWORDS and not isinstance(keyword.value, ast.Constant):
                negated = ast.UnaryOp(op=ast.Not(), operand=keyword.value)
                self._add("flag", keyword.value, f"not ({ast.unparse(keyword.value)})", _keyword_setter(keyword, negated))
        name = _call_name(node)
        if isinstance(node.func, ast.Name) and name in _SWAP_CALLS:
            other = _SWAP_CALLS[name]
            self._add("order", node, f"{other}(...)", lambda: setattr(node.func, "id", other))
        elif isinstance(node.func, ast.Name) and name == "sorted":
            self._add("order", node, "sorted(..., reverse=True)", lambda: _toggle_reverse(node))
        elif isinstance(node.func, ast.Attribute) and name in _SWAP_METHODS and len(node.args) <= 1:
            other = _SWAP_METHODS[name]
            func = node.func
            self._add("order", node, f".{other}(...)", lambda: setattr(func, "attr", other))

    def _drop(self, body: list[ast.stmt], index: int, stmt: ast.Expr) -> None:
        value = stmt.value
        call = value.value if isinstance(value, ast.Await) else value
        if not isinstance(call, ast.Call | ast.Name | ast.Attribute):
            return
        if _is_defect_ref(stmt):
            return
        shown = "pass  # dropped: " + ast.unparse(value)

        def apply() -> None:
            body[index] = ast.copy_location(ast.Pass(), stmt)

        self._add("drop", value, shown, apply)

    def _reverse_literal(self, stmt: ast.For | ast.AsyncFor) -> None:
        seq = stmt.iter
        if isinstance(seq, ast.Tuple | ast.List) and len(seq.elts) >= 2:
            shown = ast.unparse(type(seq)(elts=list(reversed(seq.elts)), ctx=ast.Load()))
            self._add("order", seq, shown, lambda: seq.elts.reverse())


def _end_line(node: ast.AST) -> int:
    end: int | None = getattr(node, "end_lineno", None)
    return end if end is not None else int(getattr(node, "lineno", 0))


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


# Where each node hangs in its tree, to put another node in its place.
_PARENTS: dict[int, tuple[ast.AST, str, int | None]] = {}


def _link_parents(tree: ast.AST) -> None:
    _PARENTS.clear()
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if isinstance(value, ast.AST):
                _PARENTS[id(value)] = (parent, name, None)
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        _PARENTS[id(item)] = (parent, name, index)


def _replace(node: ast.expr, by: ast.expr) -> None:
    """Put ``by`` where ``node`` is in the tree."""
    parent, name, index = _PARENTS[id(node)]
    if index is None:
        setattr(parent, name, by)
    else:
        getattr(parent, name)[index] = by


def _setter(node: ast.Constant, value: int | float) -> Callable[[], None]:
    return lambda: setattr(node, "value", value)


def _op_setter(node: ast.Compare, index: int, op: type[ast.cmpop]) -> Callable[[], None]:
    def apply() -> None:
        node.ops[index] = op()

    return apply


def _bool_dropper(node: ast.BoolOp, index: int) -> Callable[[], None]:
    def apply() -> None:
        rest = [v for i, v in enumerate(node.values) if i != index]
        if len(rest) == 1:
            _replace(node, rest[0])
        else:
            node.values = rest

    return apply


def _keyword_setter(keyword: ast.keyword, value: ast.expr) -> Callable[[], None]:
    return lambda: setattr(keyword, "value", ast.copy_location(value, keyword.value))


def _toggle_reverse(node: ast.Call) -> None:
    for keyword in node.keywords:
        if keyword.arg == "reverse":
            keyword.value = ast.UnaryOp(op=ast.Not(), operand=keyword.value)
            return
    node.keywords.append(ast.keyword(arg="reverse", value=ast.Constant(True)))


def _candidates(source: str, module: str) -> tuple[ast.Module, list[_Candidate]]:
    tree = ast.parse(source)
    _link_parents(tree)
    finder = _Finder(source, module)
    finder.visit_body(tree.body)
    return tree, finder.candidates


def enumerate_mutants(source: str, module: str, operators: tuple[str, ...] = OPERATORS) -> list[Mutant]:
    """Every mutant of ``source`` (the module ``module``), in source order."""
    _tree, found = _candidates(source, module)
    return [m for m, _ in found if m.operator in operators]


class UnknownMutant(LookupError):
    """The id names no mutant of this source (the code changed: regenerate the list)."""


def mutate(source: str, module: str, mutant_id: str) -> tuple[ast.Module, Mutant]:
    """``source`` parsed, with the one mutation ``mutant_id`` applied."""
    tree, found = _candidates(source, module)
    for mutant, apply in found:
        if mutant.id == mutant_id:
            apply()
            ast.fix_missing_locations(tree)
            return tree, mutant
    raise UnknownMutant(f"{mutant_id}: no such mutant in {module} (its source changed?)")


def iter_names(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(name, line) of every name and attribute read in ``tree``: where constants are used."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            yield node.id, node.lineno
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            yield node.attr, node.lineno
