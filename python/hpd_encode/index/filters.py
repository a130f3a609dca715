"""Index filters: the fields a filter sees and the three forms a filter takes.

A filter is a :class:`polars.Expr`, a SQL ``WHERE``-style string such as
:data:`EXAMPLE_WHERE` (parsed by :func:`parse_where`), or a Python callable on
a row ``dict`` of :data:`FILTER_FIELDS` (the reference's style; slow, since it
runs once per row in Python; :func:`load_callable` finds one from a
``module:function`` spec). A filter that evaluates to null for a row (e.g. on
a null confidence) drops the row, as in SQL.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from hpd_encode.errors import IndexInputError, UsageError

#: The fields a filter can use, with their types.
FILTER_FIELDS: dict[str, pl.DataType] = {
    "prompt": pl.String(),
    "model1": pl.String(),
    "model2": pl.String(),
    "votes_chosen": pl.Int64(),
    "votes_rejected": pl.Int64(),
    "confidence": pl.Float64(),
    "height": pl.Int64(),
    "width": pl.Int64(),
    "orig_chosen_height": pl.Int64(),
    "orig_chosen_width": pl.Int64(),
    "orig_rejected_height": pl.Int64(),
    "orig_rejected_width": pl.Int64(),
}

#: The text fields (held as ``Categorical`` between the scan and the output: less memory).
TEXT_FIELDS: tuple[str, ...] = ("prompt", "model1", "model2")

#: The reference's example filter (``REFERENCE.md`` §5, step 2) as a SQL string.
EXAMPLE_WHERE = "votes_chosen / (votes_chosen + votes_rejected + 1e-6) > 0.6 OR votes_chosen = 0"

RowFilter = Callable[[dict[str, Any]], object]
IndexFilter = pl.Expr | str | RowFilter | None


def fields_of(expr: pl.Expr) -> set[str]:
    """The columns an expression reads (all filter fields when Polars cannot say)."""
    try:
        return set(expr.meta.root_names())
    except pl.exceptions.PolarsError:
        return set(FILTER_FIELDS)


def _check_fields(expr: pl.Expr, what: str) -> None:
    unknown = sorted(fields_of(expr) - set(FILTER_FIELDS))
    if unknown:
        raise IndexInputError(
            f"{what} uses unknown field(s) {', '.join(unknown)}; available: {', '.join(FILTER_FIELDS)}"
        )


def parse_where(where: str) -> pl.Expr:
    """A SQL ``WHERE``-style condition to a Polars expression (via ``pl.sql_expr``)."""
    if where.lstrip()[:6].upper() == "WHERE ":
        where = where.lstrip()[6:]
    try:
        expr = pl.sql_expr(where)
    except (pl.exceptions.PolarsError, ValueError) as e:
        raise IndexInputError(f"cannot parse the filter {where!r}: {e}") from e
    if not isinstance(expr, pl.Expr):
        raise IndexInputError(f"the filter {where!r} must be one condition")
    _check_fields(expr, f"the filter {where!r}")
    return expr


def resolve_filter(flt: IndexFilter) -> tuple[pl.Expr | None, RowFilter | None, str | None]:
    """(expression, row callable, description) for a user filter; at most one of the first two is set."""
    if flt is None:
        return None, None, None
    if isinstance(flt, pl.Expr):
        _check_fields(flt, "the filter expression")
        return flt, None, str(flt)
    if isinstance(flt, str):
        return parse_where(flt), None, flt
    if callable(flt):
        name = getattr(flt, "__qualname__", None) or repr(flt)
        return None, flt, f"{getattr(flt, '__module__', '?')}:{name}"
    raise UsageError(f"filter must be a polars.Expr, a SQL string or a callable, not {type(flt).__name__}")


def apply_row_filter(df: pl.DataFrame, row_fn: RowFilter, desc: str | None) -> pl.DataFrame:
    """Keep the rows of ``df`` for which ``row_fn`` (called on a dict of
    :data:`FILTER_FIELDS`) returns truthy; an exception names the row."""
    mask = []
    rows = df.select(list(FILTER_FIELDS)).with_columns(pl.col(TEXT_FIELDS).cast(pl.String))
    for row in rows.iter_rows(named=True):
        try:
            mask.append(bool(row_fn(row)))
        except Exception as e:
            raise IndexInputError(f"the filter {desc} failed on {row}: {type(e).__name__}: {e}") from e
    return df.filter(pl.Series(mask, dtype=pl.Boolean))


def load_callable(spec: str) -> RowFilter:
    """``module:function`` or ``path/to/file.py:function`` to the function object.

    A module that is not importable as is is looked up in the current directory
    too (as ``python -m`` would).
    """
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise IndexInputError(f"filter {spec!r} must be 'module:function' or 'file.py:function'")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise IndexInputError(f"filter module file '{path}' does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"_hpd_filter_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise IndexInputError(f"cannot load filter module '{path}'")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            cwd = os.getcwd()
            if cwd in sys.path:
                raise IndexInputError(f"cannot import filter module {module_name!r}") from None
            sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                raise IndexInputError(f"cannot import filter module {module_name!r}: {e}") from e
            finally:
                sys.path.remove(cwd)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise IndexInputError(f"{module_name!r} has no function {func_name!r}")
    return func
