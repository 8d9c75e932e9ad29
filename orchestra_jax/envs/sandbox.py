"""A safe code sandbox: interprets a small arithmetic subset of Python by walking its ``ast``.

Never calls eval/exec. Allowed: int/float/bool/str/None literals, lists and tuples, names bound by
assignment (``x = ...``, ``x += ...``, tuple unpacking), arithmetic (+ - * / // % **), comparisons,
``and/or/not``, ``a if c else b``, indexing and slicing, ``if``/``for``/``while``/``break``/``continue``/
``pass``, and calls of a few whitelisted builtins (abs min max round sum len range int float pow print).
Rejected with an error message: imports, attribute access, names starting with ``_`` (dunders), function
or class definitions, lambdas, comprehensions, calls of anything outside the whitelist.
Bounded: at most ``max_steps`` evaluation steps, ranges of at most ``max_range`` elements, exponents of at
most ``max_exponent``, integers of at most ``max_int_digits`` digits, strings/lists of at most
``max_len`` items.

``run_program(source) -> SandboxResult`` never raises for any input string.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import math
import operator
from typing import Any


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    ok: bool
    value: Any = None         # value of the last expression statement (None if none)
    output: str = ""          # what print() wrote
    error: str = ""           # error text when not ok

    def text(self) -> str:
        """What a tool observation shows: printed output, else the last value, else the error."""
        if not self.ok:
            return f"Error: {self.error}"
        if self.output:
            return self.output.rstrip("\n")
        return "None" if self.value is None else repr(self.value)


class SandboxError(Exception):
    """Raised inside the interpreter; turned into ``SandboxResult(ok=False)``."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_NUMBER = (int, float, bool)


class _Interpreter:
    def __init__(self, max_steps: int, max_range: int, max_exponent: int, max_int_digits: int, max_len: int):
        self.max_steps, self.max_range, self.max_exponent = max_steps, max_range, max_exponent
        self.max_int = 10 ** max_int_digits
        self.max_len = max_len
        self.steps = 0
        self.env: dict[str, Any] = {}
        self.out: list[str] = []
        self.builtins = {
            "abs": self._abs, "min": self._minmax(min), "max": self._minmax(max), "round": self._round,
            "sum": self._sum, "len": self._len, "range": self._range, "int": self._int, "float": self._float,
            "pow": self._pow, "print": self._print,
        }

    # ---------------------------------------------------------------- limits
    def tick(self):
        self.steps += 1
        if self.steps > self.max_steps:
            raise SandboxError(f"step limit exceeded ({self.max_steps} steps)")

    def check(self, v):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= self.max_int:
            raise SandboxError("integer too large")
        if isinstance(v, float) and not math.isfinite(v):
            raise SandboxError("float overflow (inf/nan)")
        if isinstance(v, (str, list, tuple)) and len(v) > self.max_len:
            raise SandboxError(f"sequence longer than {self.max_len}")
        return v

    # ---------------------------------------------------------------- builtins
    def _nums(self, name, *args):
        for a in args:
            if not isinstance(a, _NUMBER):
                raise SandboxError(f"{name}() expects numbers, got {type(a).__name__}")

    def _abs(self, x):
        self._nums("abs", x)
        return abs(x)

    def _minmax(self, fn):
        def call(*args):
            items = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple, range)) else list(args)
            if not items:
                raise SandboxError(f"{fn.__name__}() of an empty sequence")
            try:
                return fn(items)
            except TypeError as e:
                raise SandboxError(str(e)) from None
        return call

    def _round(self, x, nd=None):
        self._nums("round", x)
        if nd is not None and (not isinstance(nd, int) or abs(nd) > 20):
            raise SandboxError("round() digits must be an int in [-20, 20]")
        return round(x) if nd is None else round(x, nd)

    def _sum(self, xs, start=0):
        if not isinstance(xs, (list, tuple, range)):
            raise SandboxError("sum() expects a list, tuple or range")
        total = start
        for x in xs:
            self.tick()
            self._nums("sum", x)
            total = self.check(total + x)
        return total

    def _len(self, xs):
        if not isinstance(xs, (list, tuple, str, range)):
            raise SandboxError(f"len() of {type(xs).__name__}")
        return len(xs)

    def _range(self, *args):
        if not 1 <= len(args) <= 3 or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise SandboxError("range() takes 1 to 3 integers")
        r = range(*args)
        if len(r) > self.max_range:
            raise SandboxError(f"range longer than {self.max_range}")
        return r

    def _int(self, x):
        if isinstance(x, str):
            try:
                return int(x.strip()[:50])
            except ValueError:
                raise SandboxError(f"int() of {x[:20]!r}") from None
        self._nums("int", x)
        return int(x)

    def _float(self, x):
        if isinstance(x, str):
            try:
                return self.check(float(x.strip()[:50]))
            except ValueError:
                raise SandboxError(f"float() of {x[:20]!r}") from None
        self._nums("float", x)
        return float(x)

    def _pow(self, a, b, mod=None):
        self._nums("pow", a, b)
        if mod is not None:
            if not all(isinstance(v, int) for v in (a, b, mod)) or b < 0 or mod == 0:
                raise SandboxError("pow(a, b, mod) needs integers, b >= 0, mod != 0")
            return pow(a, b, mod)
        return self.power(a, b)

    def _print(self, *args):
        text = " ".join(str(a) if not isinstance(a, float) else repr(a) for a in args)
        self.out.append(text + "\n")
        if sum(len(s) for s in self.out) > self.max_len:
            raise SandboxError("too much output")
        return None

    def power(self, a, b):
        if isinstance(b, (int, float)) and abs(b) > self.max_exponent:
            raise SandboxError(f"exponent larger than {self.max_exponent}")
        if isinstance(a, int) and isinstance(b, int) and b > 0 and a not in (0, 1, -1):
            if b * math.log10(abs(a)) >= math.log10(self.max_int):
                raise SandboxError("integer too large")
        if a == 0 and isinstance(b, (int, float)) and b < 0:
            raise SandboxError("zero to a negative power")
        try:
            r = a ** b
        except OverflowError:
            raise SandboxError("float overflow") from None
        if isinstance(r, complex):
            raise SandboxError("complex result")
        return r

    # ---------------------------------------------------------------- statements
    def run(self, tree: ast.Module):
        last = None
        for stmt in tree.body:
            last = self.stmt(stmt)
        return last

    def block(self, stmts):
        for s in stmts:
            self.stmt(s)

    def assign(self, target, value):
        if isinstance(target, ast.Name):
            self.check_name(target.id)
            self.env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            if not isinstance(value, (list, tuple)) or len(value) != len(target.elts):
                raise SandboxError("cannot unpack: length mismatch")
            for t, v in zip(target.elts, value):
                self.assign(t, v)
        else:
            raise SandboxError(f"assignment to {type(target).__name__} is not allowed")

    def stmt(self, s):
        self.tick()
        if isinstance(s, ast.Expr):
            return self.expr(s.value)
        if isinstance(s, ast.Assign):
            v = self.expr(s.value)
            for t in s.targets:
                self.assign(t, v)
            return None
        if isinstance(s, ast.AugAssign):
            if not isinstance(s.target, ast.Name):
                raise SandboxError("augmented assignment only to a name")
            cur = self.name(s.target.id)
            self.env[s.target.id] = self.binop(type(s.op), cur, self.expr(s.value))
            return None
        if isinstance(s, ast.If):
            self.block(s.body if self.truth(self.expr(s.test)) else s.orelse)
            return None
        if isinstance(s, ast.For):
            it = self.expr(s.iter)
            if not isinstance(it, (list, tuple, range, str)):
                raise SandboxError(f"cannot iterate over {type(it).__name__}")
            broke = False
            for v in it:
                self.tick()
                self.assign(s.target, v)
                try:
                    self.block(s.body)
                except _Break:
                    broke = True
                    break
                except _Continue:
                    continue
            if not broke:
                self.block(s.orelse)
            return None
        if isinstance(s, ast.While):
            broke = False
            while self.truth(self.expr(s.test)):
                self.tick()
                try:
                    self.block(s.body)
                except _Break:
                    broke = True
                    break
                except _Continue:
                    continue
            if not broke:
                self.block(s.orelse)
            return None
        if isinstance(s, ast.Break):
            raise _Break()
        if isinstance(s, ast.Continue):
            raise _Continue()
        if isinstance(s, ast.Pass):
            return None
        raise SandboxError(f"{type(s).__name__} statements are not allowed")

    # ---------------------------------------------------------------- expressions
    def check_name(self, name: str):
        if name.startswith("_"):
            raise SandboxError(f"name {name!r} is not allowed (names starting with '_')")

    def name(self, name: str):
        self.check_name(name)
        if name in self.env:
            return self.env[name]
        if name in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[name]
        raise SandboxError(f"name {name!r} is not defined")

    def truth(self, v) -> bool:
        if not isinstance(v, (*_NUMBER, str, list, tuple, range, type(None))):
            raise SandboxError(f"truth value of {type(v).__name__}")
        return bool(v)

    def binop(self, op, a, b):
        if op not in _BINOPS:
            raise SandboxError(f"operator {op.__name__} is not allowed")
        ok_num = isinstance(a, _NUMBER) and isinstance(b, _NUMBER)
        ok_seq = (op is ast.Add and type(a) is type(b) and isinstance(a, (str, list, tuple))) or (
            op is ast.Mult and ((isinstance(a, (str, list, tuple)) and isinstance(b, int))
                                or (isinstance(b, (str, list, tuple)) and isinstance(a, int))))
        if not (ok_num or ok_seq):
            raise SandboxError(f"unsupported operand types for {op.__name__}: "
                               f"{type(a).__name__} and {type(b).__name__}")
        if op is ast.Mult and ok_seq:
            n, seq = (b, a) if isinstance(a, (str, list, tuple)) else (a, b)
            if n * len(seq) > self.max_len:
                raise SandboxError(f"sequence longer than {self.max_len}")
        if op is ast.Pow:
            return self.check(self.power(a, b))
        try:
            return self.check(_BINOPS[op](a, b))
        except ZeroDivisionError:
            raise SandboxError("division by zero") from None
        except OverflowError:
            raise SandboxError("float overflow") from None

    def expr(self, e):
        self.tick()
        if isinstance(e, ast.Constant):
            if not isinstance(e.value, (*_NUMBER, str, type(None))):
                raise SandboxError(f"literal of type {type(e.value).__name__} is not allowed")
            return self.check(e.value)
        if isinstance(e, ast.Name):
            return self.name(e.id)
        if isinstance(e, ast.BinOp):
            return self.binop(type(e.op), self.expr(e.left), self.expr(e.right))
        if isinstance(e, ast.UnaryOp):
            v = self.expr(e.operand)
            if isinstance(e.op, ast.Not):
                return not self.truth(v)
            if not isinstance(v, _NUMBER):
                raise SandboxError(f"unary {type(e.op).__name__} of {type(v).__name__}")
            if isinstance(e.op, ast.USub):
                return -v
            if isinstance(e.op, ast.UAdd):
                return +v
            raise SandboxError(f"operator {type(e.op).__name__} is not allowed")
        if isinstance(e, ast.BoolOp):
            is_and = isinstance(e.op, ast.And)
            v = None
            for sub in e.values:
                v = self.expr(sub)
                if self.truth(v) != is_and:
                    return v
            return v
        if isinstance(e, ast.Compare):
            left = self.expr(e.left)
            for op, comp in zip(e.ops, e.comparators):
                right = self.expr(comp)
                if type(op) not in _CMPOPS:
                    raise SandboxError(f"comparison {type(op).__name__} is not allowed")
                try:
                    ok = _CMPOPS[type(op)](left, right)
                except TypeError as err:
                    raise SandboxError(str(err)) from None
                if not ok:
                    return False
                left = right
            return True
        if isinstance(e, ast.IfExp):
            return self.expr(e.body) if self.truth(self.expr(e.test)) else self.expr(e.orelse)
        if isinstance(e, ast.List):
            return self.check([self.expr(x) for x in e.elts])
        if isinstance(e, ast.Tuple):
            return self.check(tuple(self.expr(x) for x in e.elts))
        if isinstance(e, ast.Subscript):
            seq = self.expr(e.value)
            if not isinstance(seq, (list, tuple, str, range)):
                raise SandboxError(f"cannot index {type(seq).__name__}")
            if isinstance(e.slice, ast.Slice):
                parts = [None if p is None else self.expr(p) for p in (e.slice.lower, e.slice.upper, e.slice.step)]
                if not all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in parts):
                    raise SandboxError("slice indices must be integers")
                if parts[2] == 0:
                    raise SandboxError("slice step cannot be zero")
                return seq[slice(*parts)]
            idx = self.expr(e.slice)
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise SandboxError("indices must be integers")
            try:
                return seq[idx]
            except IndexError:
                raise SandboxError("index out of range") from None
        if isinstance(e, ast.Call):
            if not isinstance(e.func, ast.Name):
                raise SandboxError(f"calling {type(e.func).__name__} is not allowed (only builtins by name)")
            fname = e.func.id
            self.check_name(fname)
            if fname not in self.builtins:
                raise SandboxError(f"function {fname!r} is not allowed; allowed: {', '.join(sorted(self.builtins))}")
            if e.keywords:
                raise SandboxError("keyword arguments are not allowed")
            args = []
            for a in e.args:
                if isinstance(a, ast.Starred):
                    raise SandboxError("*args are not allowed")
                args.append(self.expr(a))
            try:
                return self.check(self.builtins[fname](*args))
            except TypeError as err:
                raise SandboxError(f"{fname}(): {err}") from None
        if isinstance(e, ast.Attribute):
            raise SandboxError("attribute access is not allowed")
        raise SandboxError(f"{type(e).__name__} expressions are not allowed")


def run_program(source: Any, max_steps: int = 20_000, max_range: int = 10_000, max_exponent: int = 1_000,
                max_int_digits: int = 100, max_len: int = 10_000) -> SandboxResult:
    """Interprets ``source`` (a safe Python subset, see module docstring). Never raises.

    Results are cached by (source, limits): programs are pure, and envs re-run the same ones often.
    """
    if not isinstance(source, str):
        return SandboxResult(False, error=f"program must be a string, got {type(source).__name__}")
    if len(source) > 20_000:
        return SandboxResult(False, error="program longer than 20000 characters")
    return _run_cached(source, max_steps, max_range, max_exponent, max_int_digits, max_len)


@functools.lru_cache(maxsize=65_536)
def _run_cached(source: str, max_steps: int = 20_000, max_range: int = 10_000, max_exponent: int = 1_000,
                max_int_digits: int = 100, max_len: int = 10_000) -> SandboxResult:
    try:
        tree = ast.parse(source, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return SandboxResult(False, error=f"syntax error: {getattr(e, 'msg', None) or type(e).__name__}")
    interp = _Interpreter(max_steps, max_range, max_exponent, max_int_digits, max_len)
    try:
        value = interp.run(tree)
    except SandboxError as e:
        return SandboxResult(False, output="".join(interp.out), error=str(e))
    except (_Break, _Continue):
        return SandboxResult(False, output="".join(interp.out), error="break/continue outside a loop")
    except RecursionError:
        return SandboxResult(False, output="".join(interp.out), error="expression nested too deeply")
    except (ArithmeticError, TypeError, ValueError, MemoryError) as e:  # defensive: never raise
        return SandboxResult(False, output="".join(interp.out), error=f"{type(e).__name__}: {e}")
    if isinstance(value, list):  # cached results are shared: keep them immutable
        value = tuple(value)
    return SandboxResult(True, value=value, output="".join(interp.out))
