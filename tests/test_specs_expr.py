"""The safe evaluator for bench formulas, constraints and output dimensions."""

from __future__ import annotations

import numpy as np
import pytest

from koschei.specs.expr import ExpressionError, check, evaluate, names_in


@pytest.mark.parametrize(("text", "expected"), [
    ("2 * 4 * rows * d", 2 * 4 * 12 * 64),
    ("rows * d // 3 + 1", 12 * 64 // 3 + 1),
    ("(rows + 1) * (d - 4) % 7", (13 * 60) % 7),
    ("2 ** 10", 1024),
    ("-d + +rows", -52),
    ("d / 8", 8.0),
    ("1.5e3 * 2", 3000.0),
    ("min(rows, d, 100)", 12),
    ("max(rows, d) * 2", 128),
    ("hq % hkv == 0", True),
    ("0 < rows <= d", True),
    ("0 < d <= rows", False),
    ("rows > 1 and d > 1", True),
    ("not (rows > 1) or d == 64", True),
    ("rows != d", True),
    ("d if rows > 100 else rows", 12),
    ("True", True),
])
def test_arithmetic_and_logic(text, expected):
    names = {"rows": 12, "d": 64, "hq": 12, "hkv": 4}
    assert evaluate(text, names) == expected


def test_numpy_scalars_are_numbers():
    assert evaluate("a * b", {"a": np.int64(3), "b": np.float32(0.5)}) == pytest.approx(1.5)


@pytest.mark.parametrize(("text", "fragment"), [
    ("x.size * 4", "attribute access (x.size) is not allowed"),
    ("len(x)", "the call len(x) is not allowed; only min() and max() may be called"),
    ("__import__('os').system('true')",
     "the call __import__('os').system('true') is not allowed"),
    ("x[0] * 2", "subscripts (x[0]) is not allowed"),
    ("(lambda: 1)()", "the call (lambda: 1)() is not allowed"),
    ("lambda: 1", "lambdas (lambda: 1) is not allowed"),
    ("'abc' * 2", "the constant 'abc' ('abc') is not allowed"),
    ("[d for d in range(3)]", "comprehensions"),
    ("(n := 3)", "assignments"),
    ("d @ d", "the operator MatMult"),
    ("d << 2", "the operator LShift"),
    ("d in (1, 2)", "the comparison In"),
    ("d is None", "the comparison Is"),
    ("min(*d)", "starred arguments"),
    ("max(d, key=abs)", "max() takes one or more positional arguments and no keywords"),
    ("min()", "min() takes one or more positional arguments"),
    ("min + 1", "min can only be called, as min(a, b)"),
])
def test_everything_else_is_rejected(text, fragment):
    with pytest.raises(ExpressionError) as caught:
        evaluate(text, {"d": 2, "x": 3})
    assert fragment in str(caught.value)
    assert str(caught.value).startswith(repr(text))


def test_syntax_errors_and_empty_text():
    with pytest.raises(ExpressionError, match=r"'d \*' is not a valid expression"):
        evaluate("d *", {"d": 1})
    with pytest.raises(ExpressionError, match="the expression is empty"):
        evaluate("   ", {})
    with pytest.raises(ExpressionError, match="not a valid expression"):
        evaluate("x = 1", {"x": 1})


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ExpressionError) as caught:
        evaluate("rows * e", {"rows": 1, "d": 2})
    assert str(caught.value) == "'rows * e': unknown name e (known: d, rows)"


def test_values_that_are_not_numbers_are_rejected():
    with pytest.raises(ExpressionError, match="x is 'text', not a number"):
        evaluate("x + 1", {"x": "text"})


def test_division_by_zero_and_huge_exponents():
    with pytest.raises(ExpressionError) as caught:
        evaluate("d / (n - 2)", {"d": 4, "n": 2})
    assert str(caught.value) == "'d / (n - 2)': division by zero"
    with pytest.raises(ExpressionError, match="division by zero in 'd % 0'"):
        evaluate("1 + d % 0", {"d": 4})
    with pytest.raises(ExpressionError, match="the exponent 100000 is too large"):
        evaluate("2 ** 100000", {})
    with pytest.raises(ExpressionError, match="not a real number"):
        evaluate("(-8) ** 0.5", {})


def test_names_in_and_check():
    assert names_in("min(rows, d) * 2 + max(lead, 1)") == {"rows", "d", "lead"}
    check("rows * d", ["rows", "d", "unused"])
    with pytest.raises(ExpressionError) as caught:
        check("rows * d * k * q", ["rows", "d"])
    assert str(caught.value) == "'rows * d * k * q': unknown names k, q (known: d, rows)"
