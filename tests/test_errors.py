"""Every exception hpd-encode raises is an ``HpdError`` that keeps a built-in base."""

from __future__ import annotations

import ast
import builtins
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import hpd_encode
from hpd_encode import _core, errors

PACKAGE = Path(hpd_encode.__file__).parent
RUST = Path(__file__).resolve().parent.parent / "rust"

_BUILTIN_EXCEPTIONS = {
    name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)
}


def _raised_name(node: ast.Raise) -> str | None:
    exc = node.exc
    if isinstance(exc, ast.Call):
        exc = exc.func
    if isinstance(exc, ast.Name):
        return exc.id
    if isinstance(exc, ast.Attribute) and isinstance(exc.value, ast.Name) and exc.value.id == "builtins":
        return exc.attr
    return None


def test_no_raise_of_a_bare_builtin_in_the_package() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and _raised_name(node) in _BUILTIN_EXCEPTIONS:
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: raise {_raised_name(node)}")
    assert not bad, "raise an HpdError subclass (hpd_encode.errors) instead:\n" + "\n".join(bad)


def test_the_walker_sees_a_bare_builtin() -> None:
    tree = ast.parse("def f():\n    raise ValueError('x')\n")
    raises = [n for n in ast.walk(tree) if isinstance(n, ast.Raise)]
    assert [_raised_name(n) for n in raises] == ["ValueError"]


def test_no_bare_python_exception_from_the_bindings() -> None:
    bad = []
    for path in sorted(RUST.rglob("*.rs")):
        if path.name == "errors.rs" and path.parent.name == "py":
            continue  # where the classes are made
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bPy[A-Z]\w*(Error|Exception)::new_err\b", line):
                bad.append(f"{path.relative_to(RUST)}:{lineno}: {line.strip()}")
    assert not bad, "use a class of rust/py/errors.rs instead:\n" + "\n".join(bad)


def test_every_exported_error_is_an_hpd_error() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(inspect.isclass(c) and issubclass(c, errors.HpdError) for c in classes)
    for name in errors.__all__:
        assert getattr(hpd_encode.errors, name) is getattr(errors, name)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.OptionError, ValueError),
        (errors.UsageError, TypeError),
        (errors.FileAccessError, OSError),
        (errors.InputNotFoundError, FileNotFoundError),
        (errors.AccessDeniedError, PermissionError),
        (errors.PathNotADirectoryError, NotADirectoryError),
        (errors.NotRegularFileError, OSError),
        (errors.PartFileError, ValueError),
        (errors.RowOutOfRangeError, IndexError),
        (errors.PartFilesNotFoundError, FileNotFoundError),
        (errors.VaeLoadError, OSError),
        (errors.DistError, RuntimeError),
        (errors.MissingExtraError, ImportError),
    ],
)
def test_each_keeps_its_builtin_base(cls: type, builtin: type) -> None:
    assert issubclass(cls, errors.HpdError) and issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("x")


def test_rust_raises_the_shared_classes(tmp_path: Path) -> None:
    with pytest.raises(errors.OptionError, match="mode must be"):
        _core.read_metadata_columns(str(tmp_path / "m.json"), "bogus", 0)
    with pytest.raises(errors.InputNotFoundError):
        _core.parquet_layout(str(tmp_path / "missing.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(errors.PartFileError, match="junk.parquet"):
        _core.parquet_layout(str(tmp_path / "junk.parquet"))
    with pytest.raises(errors.UsageError):
        _core.load_batch([], (8, 8), out=np.zeros(3))
