"""A small, safe evaluator for the arithmetic a spec writes as text.

Specs carry formulas as strings: ``bench.bytes`` / ``bench.flops`` ("2 * 4 * rows * d"),
``signature.constraints`` ("hq % hkv == 0") and output dimensions ("d // 2"). They are parsed with
Python's own grammar (``ast``) and then walked here, never handed to ``eval``. Allowed:

- int and float literals, ``True`` / ``False``, names looked up in a given mapping;
- ``+ - * / // % **``, unary ``+ - not``, comparisons (chained too), ``and`` / ``or``,
  conditional expressions ``a if c else b``, parentheses;
- calls of ``min`` and ``max`` with positional arguments.

Anything else (attribute access, other calls, subscripts, lambdas, strings, comprehensions ...) is
rejected with an :class:`ExpressionError` that says what was found and what is allowed.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

Number = int | float | bool

ALLOWED_TEXT = ("numbers, names, + - * / // % **, comparisons, and/or/not, "
                "'a if c else b' and min()/max()")
FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max}
# ``2 ** 100000`` would spend a long time building an integer nobody needs.
MAX_EXPONENT = 4096

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}
_DESCRIPTIONS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.Call: "calls",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.JoinedStr: "strings",
    ast.NamedExpr: "assignments",
    ast.Starred: "starred arguments",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}


class ExpressionError(ValueError):
    """An expression that does not parse, uses something not allowed, or cannot be evaluated."""


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    if isinstance(node, ast.BinOp):
        return f"the operator {type(node.op).__name__}"
    if isinstance(node, ast.UnaryOp):
        return f"the operator {type(node.op).__name__}"
    if isinstance(node, ast.Compare):
        names = {type(op).__name__ for op in node.ops}
        return f"the comparison {', '.join(sorted(names))}"
    return _DESCRIPTIONS.get(type(node), type(node).__name__)


def _check(node: ast.AST, text: str) -> None:
    """Raise unless every node of the tree is one the evaluator knows."""
    if isinstance(node, ast.Expression):
        _check(node.body, text)
    elif isinstance(node, ast.Constant):
        if type(node.value) not in (int, float, bool):
            raise _not_allowed(node, text)
    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise ExpressionError(f"{text!r}: {node.id} can only be called, as {node.id}(a, b)")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise _not_allowed(node, text)
        _check(node.left, text)
        _check(node.right, text)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise _not_allowed(node, text)
        _check(node.operand, text)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, text)
    elif isinstance(node, ast.Compare):
        if any(type(op) not in _COMPARE for op in node.ops):
            raise _not_allowed(node, text)
        _check(node.left, text)
        for comparator in node.comparators:
            _check(comparator, text)
    elif isinstance(node, ast.IfExp):
        for part in (node.test, node.body, node.orelse):
            _check(part, text)
    elif isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            raise ExpressionError(f"{text!r}: the call {ast.unparse(node)} is not allowed; only "
                                  f"min() and max() may be called (allowed: {ALLOWED_TEXT})")
        if node.keywords or not node.args:
            raise ExpressionError(f"{text!r}: {node.func.id}() takes one or more positional "
                                  "arguments and no keywords")
        for argument in node.args:
            if isinstance(argument, ast.Starred):
                raise _not_allowed(argument, text)
            _check(argument, text)
    else:
        raise _not_allowed(node, text)


def _not_allowed(node: ast.AST, text: str) -> ExpressionError:
    try:
        fragment = ast.unparse(node)
    except Exception:  # noqa: BLE001 - only used to make the message nicer
        fragment = type(node).__name__
    return ExpressionError(f"{text!r}: {_describe(node)} ({fragment}) is not allowed in a spec "
                           f"expression (allowed: {ALLOWED_TEXT})")


@lru_cache(maxsize=1024)
def parse(expression: str) -> ast.Expression:
    """The checked syntax tree of ``expression``; raises :class:`ExpressionError`."""
    if not isinstance(expression, str):
        raise ExpressionError(f"expected an expression as text, got {expression!r}")
    text = expression.strip()
    if not text:
        raise ExpressionError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        where = f" at column {error.offset}" if error.offset else ""
        raise ExpressionError(f"{text!r} is not a valid expression{where}: {error.msg}") from None
    _check(tree, text)
    return tree


def names_in(expression: str) -> set[str]:
    """The names ``expression`` reads (``min`` and ``max`` are functions, not names)."""
    tree = parse(expression)
    callees = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    return {node.id for node in ast.walk(tree)
            if isinstance(node, ast.Name) and id(node) not in callees}


def check(expression: str, known: Iterable[str]) -> None:
    """Raise unless ``expression`` parses and reads only ``known`` names."""
    known_names = set(known)
    unknown = sorted(names_in(expression) - known_names)
    if unknown:
        listed = ", ".join(sorted(known_names)) or "none"
        noun = "name" if len(unknown) == 1 else "names"
        raise ExpressionError(f"{expression.strip()!r}: unknown {noun} {', '.join(unknown)} "
                              f"(known: {listed})")


def evaluate(expression: str, names: Mapping[str, Any]) -> Number:
    """The value of ``expression`` with ``names`` bound; raises :class:`ExpressionError`."""
    tree = parse(expression)
    return _Evaluator(expression.strip(), names).visit(tree.body)


def _number(value: Any, name: str, text: str) -> Number:
    if isinstance(value, (bool, int, float)):
        return value
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        converted = item()
        if isinstance(converted, (bool, int, float)):
            return converted
    raise ExpressionError(f"{text!r}: {name} is {value!r}, not a number")


class _Evaluator:
    def __init__(self, text: str, names: Mapping[str, Any]):
        self.text = text
        self.names = names

    def visit(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.names:
                known = ", ".join(sorted(self.names)) or "none"
                raise ExpressionError(f"{self.text!r}: unknown name {node.id} (known: {known})")
            return _number(self.names[node.id], node.id, self.text)
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self.visit(node.operand))
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                result: Number = True
                for value in node.values:
                    result = self.visit(value)
                    if not result:
                        return result
                return result
            result = False
            for value in node.values:
                result = self.visit(value)
                if result:
                    return result
            return result
        if isinstance(node, ast.Compare):
            left = self.visit(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.visit(comparator)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)
        if isinstance(node, ast.Call):
            arguments = [self.visit(argument) for argument in node.args]
            return FUNCTIONS[node.func.id](*arguments)  # type: ignore[attr-defined]
        raise _not_allowed(node, self.text)  # unreachable: parse() checked the tree

    def _binary(self, node: ast.BinOp) -> Number:
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT and abs(left) > 1:
            raise ExpressionError(f"{self.text!r}: the exponent {right!r} is too large "
                                  f"(at most {MAX_EXPONENT})")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            part = ast.unparse(node)
            where = "" if part == self.text else f" in {part!r}"
            raise ExpressionError(f"{self.text!r}: division by zero{where}") from None
        except (OverflowError, ValueError, TypeError) as error:
            raise ExpressionError(f"{self.text!r}: {error}") from None
        if isinstance(value, complex):
            raise ExpressionError(f"{self.text!r}: {ast.unparse(node)!r} is not a real number")
        if isinstance(value, float) and math.isnan(value):
            raise ExpressionError(f"{self.text!r}: {ast.unparse(node)!r} is not a number")
        return value
