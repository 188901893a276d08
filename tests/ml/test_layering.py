"""`ml/` is the library: it never imports its adapters (`ray_jobs`, `serve`) nor the command line (`mpic`); no
project module imports a private Ray module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("ray_jobs", "serve", "mpic")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_no_module_under_ml_imports_an_adapter() -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{line}: import {name}"
        for p in sorted((ROOT / "ml").rglob("*.py"))
        for line, name in _imports(p)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert not bad, "ml/ must not import ray_jobs, serve or mpic (lazy imports included):\n" + "\n".join(bad)


def test_the_scan_sees_lazy_imports(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from serve.app import run_local\n    import ray_jobs.train\n")
    assert [n for _, n in _imports(p)] == ["serve.app", "ray_jobs.train"]


def test_ml_imports_with_the_adapters_unimportable() -> None:
    """Import every ml module with ray_jobs, serve and mpic made unimportable: all still load."""
    code = f"""
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {FORBIDDEN!r}:
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
import ml
mods = [m.name for m in pkgutil.walk_packages(ml.__path__, "ml.")]
for m in mods:
    importlib.import_module(m)
from ml.config import load_config
load_config(profile="smoke")
print(len(mods))
"""
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.split()[-1]) > 10


ADAPTERS_AND_LIBRARY = ("ml", "serve", "ray_jobs", "mpic", "bench")


def _private_ray_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "ray" and any(p.startswith("_") for p in parts[1:])


def test_no_project_module_imports_a_private_ray_module() -> None:
    """Ray's ``_private`` packages change between releases without notice: the project uses public APIs."""
    bad = [
        f"{p.relative_to(ROOT)}:{line}: import {name}"
        for pkg in ADAPTERS_AND_LIBRARY
        for p in sorted((ROOT / pkg).rglob("*.py"))
        for line, name in _imports(p)
        if _private_ray_module(name)
    ]
    assert not bad, "private Ray modules imported (lazy imports included):\n" + "\n".join(bad)


def test_the_private_module_rule() -> None:
    assert _private_ray_module("ray.serve._private.api")
    assert _private_ray_module("ray._private.state")
    assert not _private_ray_module("ray.serve.schema")
    assert not _private_ray_module("ray_jobs.train")
