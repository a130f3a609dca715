"""CLI: ``verify`` and ``repack`` (reading and rewriting part files)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """No commands yet."""
