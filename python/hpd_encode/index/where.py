"""The ``--where`` language: a SQL ``WHERE``-style condition over the index's own
fields, parsed here and built into a Polars expression directly.

Nothing else is reachable: no table function, no subquery, no file, no
function call. What it takes, loosest binding first::

    condition := condition OR condition | condition AND condition | NOT condition
               | value (= | == | != | <> | < | <= | > | >=) value
               | value IS [NOT] NULL
               | value [NOT] IN (literal, ...)
               | value [NOT] BETWEEN value AND value
               | value [NOT] LIKE 'pattern' | value [NOT] ILIKE 'pattern'
               | TRUE | FALSE | NULL | ( condition )
    value     := value (+ | -) value | value (* | / | %) value | - value | + value
               | number | 'text' | field | "field" | ( value )

Keywords and unquoted field names are case-insensitive; ``''`` is a quote
inside a string; ``%`` and ``_`` are LIKE's wildcards (ILIKE ignores case).
A leading ``WHERE`` is allowed.

The rules, chosen to match the reference's pandas filter where pandas and
SQL agree:

- ``/`` is true division (``3 / 2`` is 1.5); ``0 / 0`` is NaN and ``x / 0``
  infinite. ``%`` takes the sign of the divisor (as Python and pandas); an
  integer ``% 0`` is null.
- A comparison with NaN is false, except ``!=`` / ``<>``, which is true
  (IEEE 754, as pandas and NumPy): ``0/0 > 0.6`` drops the row.
- Nulls follow SQL's three-valued logic: a comparison with null is null,
  ``NULL AND FALSE`` is false, ``NULL OR TRUE`` true, ``NOT NULL`` null, and a
  row whose condition is null is dropped. ``x IN (1, NULL)`` is true for 1,
  null otherwise.
- Text compares with text only, numbers with numbers; the whole filter must
  be a condition (``1`` or ``prompt`` alone is an error).

Every error is one line naming the character where it is (counted from 1 in
the string as given).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from hpd_encode.errors import IndexInputError

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"[^"]+")
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|==|[=<>+\-*/%(),])
    """,
    re.VERBOSE,
)

_KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "IS", "NULL", "IN", "BETWEEN", "LIKE", "ILIKE", "TRUE", "FALSE", "WHERE"}
)
_SUBQUERY = frozenset({"SELECT", "FROM", "EXISTS", "WITH", "UNION", "JOIN", "VALUES", "TABLE"})
_COMPARISONS = frozenset({"=", "==", "!=", "<>", "<", "<=", ">", ">="})

# Value types.
NUM, TEXT, BOOL, NULL = "number", "text", "condition", "null"


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name, keyword, op, end
    text: str
    pos: int  # 1-based character


@dataclass(frozen=True)
class _Value:
    expr: pl.Expr
    type: str
    may_nan: bool = False  # may hold NaN: a float field, any computed float, a non-finite literal
    may_null: bool = True  # False for literals: a comparison with one needs no null branch
    is_float: bool = False


class _Error(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(f"{message} at character {pos}")


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    while i < len(text):
        if text[i] == "'" and _TOKEN.match(text, i) is None:
            raise _Error("unterminated string", i + 1)
        m = _TOKEN.match(text, i)
        if m is None:
            raise _Error(f"unexpected character {text[i]!r}", i + 1)
        kind = m.lastgroup or ""
        if kind == "name" and m.group().upper() in _KEYWORDS:
            out.append(_Token("keyword", m.group().upper(), i + 1))
        elif kind != "space":
            out.append(_Token(kind, m.group(), i + 1))
        i = m.end()
    out.append(_Token("end", "", len(text) + 1))
    return out


def _describe(t: _Token) -> str:
    return "end of the filter" if t.kind == "end" else repr(t.text)


class _Parser:
    """Recursive descent over the tokens, one method per level of binding."""

    def __init__(self, text: str, fields: Mapping[str, pl.DataType]) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.fields = fields

    # -- tokens --------------------------------------------------------------

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def accept(self, *words: str) -> _Token | None:
        """The next token, consumed, when it is one of ``words`` (keywords or operators)."""
        if self.tok.kind in ("keyword", "op") and self.tok.text in words:
            return self.take()
        return None

    def expect(self, word: str) -> _Token:
        t = self.accept(word)
        if t is None:
            raise _Error(f"expected {word!r}, found {_describe(self.tok)}", self.tok.pos)
        return t

    def unexpected(self) -> _Error:
        return _Error(f"unexpected {_describe(self.tok)}", self.tok.pos)

    # -- conditions ----------------------------------------------------------

    def parse(self) -> _Value:
        self.accept("WHERE")
        value = self.disjunction()
        if self.tok.kind != "end":
            raise self.unexpected()
        return value

    def disjunction(self) -> _Value:
        left = self.conjunction()
        while (op := self.accept("OR")) is not None:
            right = self.conjunction()
            left = _Value(_condition(left, op) | _condition(right, op), BOOL)
        return left

    def conjunction(self) -> _Value:
        left = self.negation()
        while (op := self.accept("AND")) is not None:
            right = self.negation()
            left = _Value(_condition(left, op) & _condition(right, op), BOOL)
        return left

    def negation(self) -> _Value:
        op = self.accept("NOT")
        if op is None:
            return self.predicate()
        return _Value(~_condition(self.negation(), op, "NOT needs a condition"), BOOL)

    def predicate(self) -> _Value:
        left = self.additive()
        t = self.tok
        if self.accept(*_COMPARISONS):
            return _compare(t, left, self.additive())
        if self.accept("IS"):
            is_not = self.accept("NOT") is not None
            self.expect("NULL")
            return _Value(left.expr.is_not_null() if is_not else left.expr.is_null(), BOOL)
        negate = self.accept("NOT")
        if self.accept("IN"):
            result = self.in_list(t, left)
        elif self.accept("BETWEEN"):
            low = self.additive()
            self.expect("AND")
            high = self.additive()
            result = _Value(_compare(t, left, low, ">=").expr & _compare(t, left, high, "<=").expr, BOOL)
        elif self.tok.text in ("LIKE", "ILIKE") and self.tok.kind == "keyword":
            result = self.like(self.take(), left)
        elif negate is not None:
            raise self.unexpected()
        else:
            return left
        return _Value(~result.expr, BOOL) if negate is not None else result

    def in_list(self, at: _Token, left: _Value) -> _Value:
        self.expect("(")
        matches: list[pl.Expr] = []
        while True:
            start = self.tok
            sign = self.accept("-", "+")
            item = self.tok
            if item.kind not in ("number", "string") and item.text not in ("NULL", "TRUE", "FALSE"):
                raise _Error("IN takes a list of literals (numbers, 'text', TRUE, FALSE, NULL)", item.pos)
            if sign is not None and item.kind != "number":
                raise _Error("IN takes a list of literals (numbers, 'text', TRUE, FALSE, NULL)", start.pos)
            value = self.primary()
            if sign is not None and sign.text == "-":
                value = dataclasses.replace(value, expr=-value.expr)
            matches.append(_compare(at, left, value, "=").expr)
            if self.accept(")"):
                break
            self.expect(",")
        out = matches[0]
        for m in matches[1:]:
            out = out | m
        return _Value(out, BOOL)

    def like(self, op: _Token, left: _Value) -> _Value:
        pattern = self.tok
        if pattern.kind != "string":
            raise _Error(f"{op.text} takes a 'pattern' string", pattern.pos)
        self.take()
        if left.type not in (TEXT, NULL):
            raise _Error(f"{op.text} needs text, not {_a(left.type)}", op.pos)
        body = _unquote(pattern.text)
        regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in body)
        flags = "(?s)" if op.text == "LIKE" else "(?si)"
        return _Value(left.expr.cast(pl.String).str.contains(f"{flags}^{regex}$"), BOOL)

    # -- values --------------------------------------------------------------

    def additive(self) -> _Value:
        left = self.multiplicative()
        while (op := self.accept("+", "-")) is not None:
            left = _arithmetic(op, left, self.multiplicative())
        return left

    def multiplicative(self) -> _Value:
        left = self.unary()
        while (op := self.accept("*", "/", "%")) is not None:
            left = _arithmetic(op, left, self.unary())
        return left

    def unary(self) -> _Value:
        op = self.accept("-", "+")
        if op is None:
            return self.primary()
        value = self.unary()
        if value.type not in (NUM, NULL):
            raise _Error(f"{op.text!r} needs a number, not {_a(value.type)}", op.pos)
        return value if op.text == "+" else dataclasses.replace(value, expr=-value.expr)

    def primary(self) -> _Value:
        t = self.tok
        if t.kind == "number":
            self.take()
            return _number(t)
        if t.kind == "string":
            self.take()
            return _Value(pl.lit(_unquote(t.text), pl.String), TEXT, may_null=False)
        if t.kind == "keyword" and t.text in ("TRUE", "FALSE", "NULL"):
            self.take()
            if t.text == "NULL":
                return _Value(pl.lit(None, pl.Boolean), NULL)
            return _Value(pl.lit(t.text == "TRUE", pl.Boolean), BOOL, may_null=False)
        if t.kind in ("name", "quoted"):
            self.take()
            if t.kind == "name" and t.text.upper() in _SUBQUERY:
                raise _Error(f"subqueries are not supported: {t.text!r}", t.pos)
            if self.tok.kind == "op" and self.tok.text == "(":
                raise _Error(f"functions are not supported: {t.text!r}", t.pos)
            return self.field(t)
        if self.accept("("):
            inner = self.disjunction()
            self.expect(")")
            return inner
        raise self.unexpected()

    def field(self, t: _Token) -> _Value:
        name = t.text[1:-1] if t.kind == "quoted" else t.text.lower()
        dtype = self.fields.get(name)
        if dtype is None:
            shown = t.text[1:-1] if t.kind == "quoted" else t.text
            raise _Error(f"unknown field {shown}", t.pos)
        if dtype == pl.String:
            return _Value(pl.col(name), TEXT)
        if dtype == pl.Boolean:
            return _Value(pl.col(name), BOOL)
        return _Value(pl.col(name), NUM, may_nan=dtype.is_float(), is_float=dtype.is_float())


def _a(kind: str) -> str:
    return {NUM: "a number", TEXT: "text", BOOL: "a condition", NULL: "NULL"}[kind]


def _unquote(text: str) -> str:
    return text[1:-1].replace("''", "'")


def _number(t: _Token) -> _Value:
    if re.fullmatch(r"\d+", t.text):
        n = int(t.text)
        if n < 2**63:
            return _Value(pl.lit(n, pl.Int64), NUM, may_null=False)
    x = float(t.text)
    return _Value(pl.lit(x, pl.Float64), NUM, may_nan=not math.isfinite(x), may_null=False, is_float=True)


def _condition(value: _Value, op: _Token, message: str | None = None) -> pl.Expr:
    if value.type == NULL:
        return pl.lit(None, pl.Boolean)
    if value.type != BOOL:
        raise _Error(message or f"{op.text} needs conditions, not {_a(value.type)}", op.pos)
    return value.expr


def _arithmetic(op: _Token, a: _Value, b: _Value) -> _Value:
    for v in (a, b):
        if v.type not in (NUM, NULL):
            raise _Error(f"{op.text!r} needs numbers, not {_a(v.type)}", op.pos)
    if NULL in (a.type, b.type):
        return _Value(pl.lit(None, pl.Float64), NULL)
    may_null = a.may_null or b.may_null
    if op.text == "/":
        return _Value(a.expr.cast(pl.Float64) / b.expr.cast(pl.Float64), NUM, True, may_null, True)
    # Any computed float may be NaN (inf - inf, inf * 0, an overflow); an integer % 0 is null.
    is_float = a.is_float or b.is_float
    may_null = may_null or (op.text == "%" and not is_float)
    if op.text == "+":
        expr = a.expr + b.expr
    elif op.text == "-":
        expr = a.expr - b.expr
    elif op.text == "*":
        expr = a.expr * b.expr
    else:  # %: an integer % 0 is null; a float % 0 NaN
        expr = a.expr % b.expr
    return _Value(expr, NUM, is_float, may_null, is_float)


def _compare(at: _Token, a: _Value, b: _Value, op: str | None = None) -> _Value:
    """``a op b`` (``op`` defaults to ``at``'s): null with null, false with NaN (``!=`` true)."""
    op = op or at.text
    if NULL in (a.type, b.type):
        return _Value(pl.lit(None, pl.Boolean), BOOL)
    if a.type != b.type:
        raise _Error(f"cannot compare {_a(a.type)} with {_a(b.type)}", at.pos)
    if a.type == BOOL and op not in ("=", "==", "!=", "<>"):
        raise _Error(f"conditions compare with = and != only, not {op}", at.pos)
    x, y = a.expr, b.expr
    result = {
        "=": x == y,
        "==": x == y,
        "!=": x != y,
        "<>": x != y,
        "<": x < y,
        "<=": x <= y,
        ">": x > y,
        ">=": x >= y,
    }[op]
    if a.may_nan or b.may_nan:
        ne = pl.lit(op in ("!=", "<>"))
        nan_side = [v for v in ((a, x), (b, y)) if v[0].may_nan]
        other = b if nan_side[0][0] is a else a
        if len(nan_side) == 1 and not other.may_null:
            # NaN against a literal (the usual '... > 0.6'): Kleene logic keeps a null null.
            nan = nan_side[0][1].is_nan()
            result = result | nan if op in ("!=", "<>") else result & ~nan
        else:
            missing = x.is_null() | y.is_null()
            nan = x.is_nan() | y.is_nan()
            result = pl.when(missing).then(pl.lit(None, pl.Boolean)).when(nan).then(ne).otherwise(result)
    return _Value(result, BOOL)


def parse_condition(text: str, fields: Mapping[str, pl.DataType]) -> pl.Expr:
    """``text`` (a WHERE-style condition over ``fields``: name -> Polars type) as a Boolean Polars
    expression; :class:`IndexInputError` (one line, naming the character) when it is not one."""
    if not text.strip():
        raise IndexInputError("the filter is empty; give a condition such as 'votes_chosen > 0'")
    try:
        value = _Parser(text, fields).parse()
    except _Error as e:
        raise IndexInputError(f"cannot parse the filter {text!r}: {e}") from None
    if value.type not in (BOOL, NULL):
        raise IndexInputError(
            f"the filter {text!r} is not a condition (it gives {_a(value.type)}); "
            "compare it with something, e.g. 'votes_chosen > 0'"
        )
    return value.expr if value.type == BOOL else pl.lit(None, pl.Boolean)
