"""A safe arithmetic evaluator over ``ast.parse(mode="eval")`` — never ``eval``.

Only numbers, ``+ - * / // % **``, unary ``+ -``, parentheses and a few named
functions are accepted; everything else (names, attributes, calls to anything else,
subscripts, strings, comprehensions...) is refused. Bombs fail fast, before any big
number is built:

- input longer than ``max_chars``, more than :data:`MAX_NODES` nodes or deeper than
  :data:`MAX_DEPTH` → refused before evaluation;
- ``a ** b`` is estimated first (``|b| * log10|a|``) and refused when the result
  would have more than :data:`MAX_DIGITS` digits (``9**9**9``, ``10**10**10``);
- ``factorial(n)`` only for integers ``0 <= n <= MAX_FACTORIAL``;
- every intermediate integer is bounded to :data:`MAX_DIGITS` digits, so a chain of
  multiplications cannot grow without limit either.
"""

from __future__ import annotations

import ast
import math
import operator
import re

from ..errors import Vx11Error

MAX_DEPTH = 32
MAX_NODES = 200
MAX_DIGITS = 4300  # Python's own int<->str conversion limit
MAX_FACTORIAL = 1000
_INT_LIMIT = 10 ** MAX_DIGITS
# A run of unary signs nests one AST level each; refuse it before the parser walks it.
_SIGN_RUN = re.compile(r"(?:[-+~]\s*){" + str(MAX_DEPTH + 1) + ",}")


class ArithError(Vx11Error):
    """The expression is not arithmetic Switch accepts, or it exceeds a limit."""


def _checked(x: int | float) -> int | float:
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            raise ArithError("result is not a finite number")
        return x
    if abs(x) >= _INT_LIMIT:
        raise ArithError(f"result has more than {MAX_DIGITS} digits")
    return x


def _pow(a: int | float, b: int | float) -> int | float:
    if a not in (0, 1, -1) and b != 0:
        if isinstance(b, int) and b < 0 and isinstance(a, int):
            pass  # becomes a float below, magnitude shrinks
        elif abs(b) * math.log10(abs(a)) > MAX_DIGITS:
            raise ArithError(f"power too large: the result would exceed {MAX_DIGITS} digits")
    if a == 0 and b < 0:
        raise ArithError("zero cannot be raised to a negative power")
    try:
        r = a ** b
    except OverflowError as e:
        raise ArithError("power too large") from e
    if isinstance(r, complex):
        raise ArithError("result is not a real number")
    return r


def _div(a, b):
    if b == 0:
        raise ArithError("division by zero")
    return a / b


def _floordiv(a, b):
    if b == 0:
        raise ArithError("division by zero")
    return a // b


def _mod(a, b):
    if b == 0:
        raise ArithError("modulo by zero")
    return a % b


def _factorial(n):
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise ArithError("factorial needs a non-negative integer")
    if n > MAX_FACTORIAL:
        raise ArithError(f"factorial argument above {MAX_FACTORIAL}")
    return math.factorial(n)


def _sqrt(x):
    if x < 0:
        raise ArithError("square root of a negative number")
    r = math.isqrt(x) if isinstance(x, int) else None
    if r is not None and r * r == x:
        return r
    return math.sqrt(x)


_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: _div, ast.FloorDiv: _floordiv, ast.Mod: _mod, ast.Pow: _pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"sqrt": (_sqrt, 1, 1), "abs": (abs, 1, 1), "factorial": (_factorial, 1, 1),
          "min": (min, 1, 16), "max": (max, 1, 16), "round": (round, 1, 1)}


def _shape_check(tree: ast.AST) -> None:
    count = 0
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ArithError(f"expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise ArithError(f"expression nested deeper than {MAX_DEPTH}")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ArithError("only numbers are allowed")
        return _checked(v)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _checked(_BINOPS[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS and not node.keywords):
        fn, lo, hi = _FUNCS[node.func.id]
        if not lo <= len(node.args) <= hi:
            raise ArithError(f"{node.func.id}() takes {lo}..{hi} arguments")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ArithError("only numbers are allowed")
        return _checked(fn(*(_eval(a) for a in node.args)))
    raise ArithError(f"not allowed in arithmetic: {type(node).__name__}")


def parse(text: str, max_chars: int = 2000) -> ast.Expression:
    """The checked syntax tree of ``text`` (ArithError if it is not acceptable arithmetic)."""
    if len(text) > max_chars:
        raise ArithError(f"expression longer than {max_chars} characters")
    if text.count("(") > MAX_DEPTH or _SIGN_RUN.search(text):
        raise ArithError(f"expression nested deeper than {MAX_DEPTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ArithError("not an arithmetic expression") from e
    _shape_check(tree)
    return tree


def evaluate(text: str, max_chars: int = 2000) -> int | float:
    """The value of the arithmetic expression ``text``; ArithError when refused."""
    try:
        return _eval(parse(text, max_chars))
    except (OverflowError, ValueError, TypeError) as e:  # int->str limits, float overflow
        raise ArithError(f"cannot compute: {e}") from e


def format_number(x: int | float) -> str:
    """A number as Switch answers it (integral floats without ``.0``)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    if isinstance(x, float):
        return repr(x)
    return str(x)
