"""Parsing ``detailed_results`` (the reference's ``str()`` of a Python dict) inside Polars.

Two passes. The fast pass (:func:`fast_parse`) runs on every row: one
anchored regex over the string's head, matching exactly what the reference
writes (``str()`` of its dict: its key order, single quotes, ``": "`` and
``", "``, lists or tuples, ``None``). A row it cannot read (other key order,
spacing or quotes, float votes, a missing key, garbage) is marked
``_fallback`` and keeps its string in ``_raw``; the tolerant pass
(:func:`general_parse`) then parses only those rows, accepting any spacing and
either quote, and flags the ones that are malformed. Reference-written files
never reach the second pass; :func:`malformed_reason` says in words why a
string was rejected (for the few rows reported).

Only the keys a run needs are parsed (:func:`keys_for`): the votes whenever
there is a filter (a row without them is malformed), the others when the
filter uses their fields. Without a filter nothing is parsed, as the
reference reads no ``detailed_results`` then.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from hpd_encode.index.filters import FILTER_FIELDS


@dataclass(frozen=True)
class Key:
    """One key of ``detailed_results`` and the filter fields it gives."""

    name: str  # the key in detailed_results
    fields: tuple[str, ...]  # the filter fields it gives
    kind: str  # "int", "float" or "hw"
    required: bool


#: The keys, in the order the reference writes them.
KEYS = (
    Key("votes_chosen", ("votes_chosen",), "int", True),
    Key("votes_rejected", ("votes_rejected",), "int", True),
    Key("confidence", ("confidence",), "float", False),
    Key("orig_chosen_hw", ("orig_chosen_height", "orig_chosen_width"), "hw", False),
    Key("orig_rejected_hw", ("orig_rejected_height", "orig_rejected_width"), "hw", False),
)
#: Fields that come from ``detailed_results`` (or typed columns of the same names).
DR_FIELDS = tuple(f for k in KEYS for f in k.fields)

# Fast pass: values as the reference writes them, in named groups.
_FAST = {
    "int": r"(?P<{name}>-?\d+|None)",
    "float": r"(?P<{name}>-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|None)",
    "hw": r"(?:[\[(](?P<{name}_0>\d+), (?P<{name}_1>\d+)[\])]|None)",
}
_Q = r"""['"]"""
_GENERAL = {
    "int": r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|None)",
    "float": r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|None)",
    "hw": r"[\[(]\s*(\d+)\s*,\s*(\d+)\s*,?\s*[\])]|(None)",
}


def keys_for(fields: Iterable[str] | None) -> list[Key]:
    """The keys to parse for a filter reading ``fields``: none without a filter
    (``None``), else the required ones and those giving any of ``fields``."""
    if fields is None:
        return []
    wanted = set(fields)
    return [k for k in KEYS if k.required or wanted.intersection(k.fields)]


def _not_none(raw: pl.Expr) -> pl.Expr:
    return pl.when(raw != "None").then(raw)


def _unparsed(keys: Sequence[Key]) -> list[pl.Expr]:
    """Null columns for the fields of keys not parsed this run."""
    done = {f for k in keys for f in k.fields}
    return [pl.lit(None, FILTER_FIELDS[f]).alias(f) for f in DR_FIELDS if f not in done]


def fast_parse(dr: pl.Expr, keys: Sequence[Key]) -> tuple[list[pl.Expr], list[pl.Expr], pl.Expr]:
    """(stage-1 columns, field expressions on them, "row fully read" flag).

    One anchored regular expression reads the string's head exactly as the
    reference writes it: ``{'votes_chosen': 3, 'votes_rejected': 1, ...``, the
    keys in the reference's order up to the last one needed. Anchored, it
    stops at the first character that differs, and one pass reads every key
    (a search per key costs twice as much). With no keys, nothing is read and
    every row counts as read.
    """
    if not keys:
        return [], _unparsed(keys), pl.lit(True)
    last = max(KEYS.index(k) for k in keys)
    head = ", ".join(f"'{k.name}': " + _FAST[k.kind].format(name=k.name) for k in KEYS[: last + 1])
    stage1 = [
        dr.str.extract_groups(rf"^\{{{head}[,}}]").alias("_f_head"),
        dr.str.ends_with("}").alias("_f_end"),
    ]
    g = pl.col("_f_head").struct
    fields = _unparsed(keys)
    for key in keys:
        if key.kind == "hw":
            fields += [
                g.field(f"{key.name}_{i}").cast(pl.Int64, strict=False).alias(f)
                for i, f in enumerate(key.fields)
            ]
        else:
            fields.append(
                _not_none(g.field(key.name))
                .cast(FILTER_FIELDS[key.fields[0]], strict=False)
                .alias(key.fields[0])
            )
    # The first key is always in the pattern and always captured when it matches.
    ok = g.field(KEYS[0].name).is_not_null() & pl.col("_f_end")
    return stage1, fields, ok.fill_null(False)


def general_parse(df: pl.DataFrame, column: str, keys: Sequence[Key]) -> pl.DataFrame:
    """Parse ``column`` (``detailed_results`` strings) of ``df`` the tolerant way.

    Returns ``df`` with the :data:`DR_FIELDS` (re)set and ``_malformed`` added:
    true where the string is null, not a ``{...}`` literal, lacks the votes, or
    has a value (of a key in ``keys``) that is not a number / ``None`` / ``[h, w]``.
    """
    dr = pl.col(column).cast(pl.String)
    groups = []
    malformed = dr.is_null() | ~dr.str.contains(r"(?s)^\s*\{.*\}\s*$")
    fields = _unparsed(keys)
    for key in keys:
        # Group 1 captures the opening quote, so "key present" and "value well-formed"
        # come out of one pass: a present key with a bad value has group 1 set and
        # the value groups null.
        pattern = rf"({_Q}){key.name}{_Q}\s*:\s*(?:(?:{_GENERAL[key.kind]})\s*[,}}])?"
        groups.append(dr.str.extract_groups(pattern).alias(f"_g_{key.name}"))
        g = pl.col(f"_g_{key.name}").struct
        present = g.field("1").is_not_null()
        if key.required:
            malformed = malformed | ~present
        if key.kind == "hw":
            malformed = malformed | (present & g.field("2").is_null() & g.field("4").is_null())
            fields += [g.field(str(i + 2)).cast(pl.Int64).alias(f) for i, f in enumerate(key.fields)]
        else:
            malformed = malformed | (present & g.field("2").is_null())
            value = _not_none(g.field("2")).cast(pl.Float64, strict=False)
            fields.append(value.cast(FILTER_FIELDS[key.fields[0]], strict=False).alias(key.fields[0]))
    return (
        df.lazy()
        .with_columns(groups)
        .with_columns(*fields, malformed.fill_null(True).alias("_malformed"))
        .drop([f"_g_{k.name}" for k in keys])
        .collect()
    )


def malformed_reason(raw: str | None) -> str:
    """Why a ``detailed_results`` string was rejected, in words (few rows only)."""
    if raw is None:
        return "detailed_results is null"
    snippet = raw if len(raw) <= 120 else raw[:117] + "..."
    if len(raw) > 100_000:
        return f"detailed_results is not a dict literal: {snippet!r}"
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as e:
        return f"detailed_results is not a Python literal ({type(e).__name__}): {snippet!r}"
    if not isinstance(value, dict):
        return f"detailed_results is a {type(value).__name__}, not a dict: {snippet!r}"
    absent = [k.name for k in KEYS if k.required and k.name not in value]
    if absent:
        return f"detailed_results lacks {', '.join(repr(k) for k in absent)}: {snippet!r}"
    return f"detailed_results has a value of the wrong type: {snippet!r}"
