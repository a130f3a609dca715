"""Lazy module attributes: names that import their (heavier) module on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hpd_encode.errors import MissingNameError


def lazy_exports(package: str, table: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``table`` maps a name to the
    module defining it (absolute, or relative to ``package`` with a leading
    dot); the value is imported on first access and cached in ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise MissingNameError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
