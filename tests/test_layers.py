"""The layers only point down (docs/ARCHITECTURE.md): an import-graph check of the package.

Every `import` of the installed package is read with `ast` (imports inside functions included),
with `pyproject.toml`'s package-dir mapping (`normspec.spec` is `spec/`, ...), and each edge is
checked against the layer table below.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers it may import (itself included). Order is bottom-up.
ALLOWED = {
    "spec": {"spec"},
    "library": {"spec", "library"},
    "records": {"spec", "library", "records"},
    "impls": {"spec", "impls"},
    "properties": {"spec", "library", "records", "impls", "properties"},
    "application": {"spec", "library", "records", "impls", "properties", "application"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[:2] == ["normspec", "spec"]:
        return "spec"
    if parts[:2] == ["normspec", "library"]:
        return "library"
    if parts[:2] in (["normspec", "registry"], ["normspec", "norms"]):
        return "records"
    if parts[:2] == ["normspec", "impls"]:
        return "impls"
    if parts[:2] == ["normspec", "properties"]:
        return "properties"
    return "application"


def package_modules() -> dict[str, Path]:
    """module name -> source file, from pyproject's packages and package-dir mapping."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    modules = {}
    for package in config["packages"]:
        base = next((k for k in sorted(mapping, key=len, reverse=True)
                     if package == k or package.startswith(k + ".")), None)
        assert base is not None, f"package {package} has no package-dir entry"
        folder = ROOT / mapping[base] / Path(*package[len(base):].lstrip(".").split(".")) \
            if package != base else ROOT / mapping[base]
        assert folder.is_dir(), f"package {package} maps to {folder}, which does not exist"
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def imports_of(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name == "normspec" or name.startswith("normspec.")}


MODULES = package_modules()


def edges():
    for module, path in MODULES.items():
        for target in sorted(imports_of(module, path)):
            if target in MODULES or target.rsplit(".", 1)[0] in MODULES:
                yield module, target if target in MODULES else target.rsplit(".", 1)[0]


def test_every_module_of_the_package_is_seen():
    assert {"normspec.spec.batch_norm", "normspec.library.tolerance", "normspec.norms.batch_norm",
            "normspec.impls.base", "normspec.properties.core", "normspec.cli"} <= set(MODULES)


def test_no_import_points_up():
    bad = [f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})" for a, b in edges()
           if layer_of(b) not in ALLOWED[layer_of(a)]]
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_spec_imports_nothing_else_of_normspec():
    assert all(layer_of(b) == "spec" for a, b in edges() if layer_of(a) == "spec")


@pytest.mark.parametrize("source,target", [
    ("normspec.norms.batch_norm", "normspec.properties.core"),
    ("normspec.impls.numpy_kernels.sync_batch_norm", "normspec.norms.sync_batch_norm"),
    ("normspec.library.tolerance", "normspec.registry"),
    ("normspec.spec.batch_norm", "normspec.library.case"),
])
def test_the_check_rejects_an_upward_import(source, target):
    assert layer_of(target) not in ALLOWED[layer_of(source)]


def test_relative_and_function_level_imports_are_read(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from ..norms import batch_norm\n    import normspec.properties.core\n")
    assert imports_of("normspec.library.mod", path) >= {"normspec.norms", "normspec.norms.batch_norm",
                                                         "normspec.properties.core"}
