"""``_core.pyi`` must describe ``hpd_encode._core`` exactly: the same names at
module and class level, the same parameters (names, kinds, defaults), and the
same class hierarchy. mypy's stubtest runs too where mypy is installed."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import hpd_encode
from hpd_encode import _core

STUB = Path(hpd_encode.__file__).with_name("_core.pyi")
MODULE_DUNDERS = {
    "__all__",
    "__doc__",
    "__file__",
    "__loader__",
    "__name__",
    "__package__",
    "__spec__",
    "__builtins__",
}
#: Special methods a stub may list; each must exist on the runtime class.
SPECIAL = {
    "__new__",
    "__init__",
    "__len__",
    "__eq__",
    "__hash__",
    "__repr__",
    "__reduce__",
    "__enter__",
    "__exit__",
}


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(), filename=str(STUB))


def stub_members(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Names a module or class body defines (functions, classes, annotated names);
    private aliases (``_Path: TypeAlias``) and imports are not members."""
    out: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if not (isinstance(node.annotation, ast.Name) and node.annotation.id == "TypeAlias"):
                out[node.target.id] = node
    return out


def runtime_module_names() -> set[str]:
    return {n for n in dir(_core) if n not in MODULE_DUNDERS}


def runtime_class_names(cls: type) -> set[str]:
    return {n for n in vars(cls) if not (n.startswith("__") and n.endswith("__"))}


def decorators(node: ast.FunctionDef) -> set[str]:
    return {d.id for d in node.decorator_list if isinstance(d, ast.Name)}


def stub_params(node: ast.FunctionDef, *, drop_first: bool) -> list[tuple[str, str, object]]:
    """(name, kind, default) per parameter; default is ``inspect.Parameter.empty``, a literal, or ``...``."""
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    defaults: list[object] = [inspect.Parameter.empty] * (len(positional) - len(a.defaults))
    defaults += [ast.literal_eval(d) for d in a.defaults]
    out = []
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        kind = "POSITIONAL_ONLY" if i < len(a.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        out.append((arg.arg, kind, default))
    if a.vararg:
        out.append((a.vararg.arg, "VAR_POSITIONAL", inspect.Parameter.empty))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "KEYWORD_ONLY", inspect.Parameter.empty if d is None else ast.literal_eval(d)))
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD", inspect.Parameter.empty))
    return out[1:] if drop_first else out


def runtime_params(obj: object, *, drop_first: bool) -> list[tuple[str, str, object]]:
    sig = inspect.signature(obj)  # from pyo3's __text_signature__
    out = [(p.name, p.kind.name, p.default) for p in sig.parameters.values()]
    return out[1:] if drop_first and out and out[0][0] in ("self", "cls", "$self", "$cls") else out


def assert_same_params(where: str, stub: list, runtime: list) -> None:
    assert [(n, k) for n, k, _ in stub] == [(n, k) for n, k, _ in runtime], where
    for (name, _, sd), (_, _, rd) in zip(stub, runtime):
        if rd is inspect.Parameter.empty:
            assert sd is inspect.Parameter.empty, f"{where}: '{name}' has no default at runtime"
        elif rd is Ellipsis:  # pyo3 writes non-literal defaults as `...`
            assert sd is not inspect.Parameter.empty, f"{where}: '{name}' needs a default in the stub"
        else:
            assert sd == rd, f"{where}: default of '{name}' is {rd!r} at runtime, {sd!r} in the stub"


# ---------------------------------------------------------------------------


def test_stub_ships_with_the_package() -> None:
    assert STUB.is_file()
    assert STUB.with_name("py.typed").is_file()


def test_module_names_match() -> None:
    stub = set(stub_members(stub_tree().body))
    runtime = runtime_module_names()
    assert runtime - stub == set(), f"in _core but not in _core.pyi: {sorted(runtime - stub)}"
    assert stub - runtime == set(), f"in _core.pyi but not in _core: {sorted(stub - runtime)}"
    stub_all = next(
        ast.literal_eval(n.value)
        for n in stub_tree().body
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)
    )
    assert sorted(stub_all) == sorted(_core.__all__)


def test_constants_have_the_stubbed_type() -> None:
    builtin_types = {"int": int, "str": str, "float": float, "bool": bool, "tuple": tuple}
    for name, node in stub_members(stub_tree().body).items():
        if isinstance(node, ast.AnnAssign):
            annotation = node.annotation
            if isinstance(annotation, ast.Subscript):  # tuple[str, ...]: the items' type too
                assert isinstance(annotation.value, ast.Name) and annotation.value.id == "tuple", name
                items = annotation.slice
                assert isinstance(items, ast.Tuple) and isinstance(items.elts[0], ast.Name), name
                item_type = builtin_types[items.elts[0].id]
                assert all(isinstance(v, item_type) for v in getattr(_core, name)), name
                annotation = annotation.value
            assert isinstance(annotation, ast.Name), name
            assert isinstance(getattr(_core, name), builtin_types[annotation.id]), name


def test_functions_match() -> None:
    for name, node in stub_members(stub_tree().body).items():
        if isinstance(node, ast.FunctionDef):
            runtime = getattr(_core, name)
            assert callable(runtime), name
            assert_same_params(
                name, stub_params(node, drop_first=False), runtime_params(runtime, drop_first=False)
            )


def test_classes_match() -> None:
    classes = {
        n: node for n, node in stub_members(stub_tree().body).items() if isinstance(node, ast.ClassDef)
    }
    runtime_classes = {n for n in runtime_module_names() if isinstance(getattr(_core, n), type)}
    assert set(classes) == runtime_classes
    for name, node in classes.items():
        cls = getattr(_core, name)
        # Same bases (by name: the stub's Exception is the builtin one).
        stub_bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
        assert stub_bases == [b.__name__ for b in cls.__bases__ if b is not object], name
        members = stub_members(node.body)
        public = {n for n in members if n not in SPECIAL}
        assert public == runtime_class_names(cls), (
            f"{name}: stub {sorted(public)} vs runtime {sorted(runtime_class_names(cls))}"
        )
        for member, m in members.items():
            if member in SPECIAL:
                assert member in vars(cls), f"{name}.{member} is stubbed but not defined by the class"
                if member == "__new__":
                    assert_same_params(
                        f"{name}()", stub_params(m, drop_first=True), runtime_params(cls, drop_first=False)
                    )
                continue
            raw = inspect.getattr_static(cls, member)
            if isinstance(m, ast.AnnAssign):  # a class attribute
                assert not callable(raw) and not inspect.isdatadescriptor(raw), f"{name}.{member}"
                continue
            assert isinstance(m, ast.FunctionDef)
            kinds = decorators(m)
            if "property" in kinds:
                assert inspect.isdatadescriptor(raw), f"{name}.{member} is a property in the stub only"
                assert stub_params(m, drop_first=True) == [], f"{name}.{member}: a getter takes only self"
            elif "staticmethod" in kinds:
                assert isinstance(raw, staticmethod), f"{name}.{member} is a staticmethod in the stub only"
                assert_same_params(
                    f"{name}.{member}",
                    stub_params(m, drop_first=False),
                    runtime_params(getattr(cls, member), drop_first=False),
                )
            else:
                assert callable(raw) and not isinstance(raw, staticmethod), f"{name}.{member}"
                assert_same_params(
                    f"{name}.{member}", stub_params(m, drop_first=True), runtime_params(raw, drop_first=True)
                )


def test_hpd_encode_reexports_are_stubbed() -> None:
    stub = set(stub_members(stub_tree().body))
    from_core = {
        n for n in hpd_encode.__all__ if hasattr(_core, n) and getattr(hpd_encode, n) is getattr(_core, n)
    }
    assert from_core and from_core <= stub


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_stubtest() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "hpd_encode._core", "--ignore-missing-stub"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
