"""The ast sandbox computes arithmetic right and rejects everything outside its subset."""
import operator

import numpy as np
import pytest

from orchestra_jax.envs.sandbox import run_program

OPS = [("+", operator.add), ("-", operator.sub), ("*", operator.mul), ("//", operator.floordiv),
       ("%", operator.mod)]


def _random_expr(rng, depth):
    """(text, value) of a random integer expression, value computed with ``operator`` (independent)."""
    if depth == 0 or rng.random() < 0.3:
        v = int(rng.integers(-50, 50))
        return (f"({v})" if v < 0 else str(v)), v
    (lt, lv), (rt, rv) = _random_expr(rng, depth - 1), _random_expr(rng, depth - 1)
    sym, fn = OPS[int(rng.integers(len(OPS)))]
    if sym in ("//", "%") and rv == 0:
        rt, rv = "7", 7
    return f"({lt} {sym} {rt})", fn(lv, rv)


def test_random_arithmetic_matches_operator_reference():
    rng = np.random.default_rng(0)
    for _ in range(300):
        text, value = _random_expr(rng, 4)
        res = run_program(text)
        assert res.ok, (text, res.error)
        assert res.value == value, text


@pytest.mark.parametrize("src, value", [
    ("x = 3\ny = x ** 2 + 1\ny", 10),
    ("s = 0\nfor i in range(1, 11):\n    s += i * i\ns", 385),
    ("a, b = 0, 1\nfor i in range(10):\n    a, b = b, a + b\na", 55),
    ("n = 0\nwhile n < 7:\n    n += 2\nn", 8),
    ("c = 0\nfor i in range(20):\n    if i % 3 == 0 or i % 5 == 0:\n        c += 1\nc", 9),  # 0 3 5 6 9 10 12 15 18
    ("xs = [4, 1, 9]\nmax(xs) - min(xs) + len(xs) + sum(xs)", 25),
    ("abs(-3) + round(2.567, 2)", 5.57),
    ("7 / 2", 3.5),
    ("1 < 2 < 3 and not 4 > 5", True),
    ("'ab' * 2", "abab"),
    ("x = [1, 2, 3, 4]\nx[1:3]", (2, 3)),
    ("pow(3, 4, 5)", 1),
    ("3 if 2 > 1 else 4", 3),
])
def test_programs(src, value):
    res = run_program(src)
    assert res.ok, res.error
    assert res.value == pytest.approx(value) if isinstance(value, float) else res.value == value


def test_print_output():
    res = run_program("print(1, 2)\nprint(2.5)")
    assert res.ok and res.output == "1 2\n2.5\n" and res.text() == "1 2\n2.5"


@pytest.mark.parametrize("src, needle", [
    ("import os", "Import"),
    ("from os import path", "ImportFrom"),
    ("x = 1\nx.real", "attribute"),
    ("().__class__.__bases__", "attribute"),
    ("__import__('os')", "'_'"),
    ("_x = 1", "'_'"),
    ("open('/etc/passwd')", "not allowed"),
    ("eval('1')", "not allowed"),
    ("exec('1')", "not allowed"),
    ("getattr(1, 'real')", "not allowed"),
    ("def f():\n    return 1", "FunctionDef"),
    ("class A:\n    pass", "ClassDef"),
    ("lambda: 1", "Lambda"),
    ("[i for i in range(3)]", "ListComp"),
    ("max(*[1, 2])", "args"),
    ("round(2.5, ndigits=1)", "keyword"),
    ("2 ** 100000", "exponent"),
    ("10 ** 99 * 10 ** 99", "too large"),
    ("while True:\n    pass", "step limit"),
    ("for i in range(10 ** 9):\n    pass", "range"),
    ("1 / 0", "division by zero"),
    ("y", "not defined"),
    ("1 +", "syntax"),
    ("'a' * 10 ** 6", "longer"),
    ("[1] + 2", "unsupported"),
    ("with x:\n    pass", "With"),
    ("try:\n    pass\nexcept:\n    pass", "Try"),
    ("global x", "Global"),
    ("x = 1\ndel x", "Delete"),
    ("f'{1}'", "JoinedStr"),
    ("{1: 2}", "Dict"),
])
def test_rejections(src, needle):
    res = run_program(src)
    assert not res.ok
    assert needle in res.error, res.error
    assert res.text().startswith("Error:")


@pytest.mark.parametrize("bad", [None, 3, b"1+1", "x" * 30000, "(" * 500 + "1" + ")" * 500])
def test_never_raises(bad):
    res = run_program(bad)
    assert isinstance(res.ok, bool)
