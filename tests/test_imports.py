"""The package's shape: the public import paths, no import cycle, and the
framework adapters imported only on request (with a clear error when their
framework is missing)."""

import subprocess
import sys

import pytest

from conftest import run_python


def test_torch_module_explains_a_missing_torch(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "gradguard.torch", raising=False)
    with pytest.raises(ImportError, match="gradguard.torch needs PyTorch"):
        importlib.import_module("gradguard.torch")
    monkeypatch.delitem(sys.modules, "gradguard.torch", raising=False)


def test_gradguard_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, gradguard; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


PUBLIC = ("gradguard", "gradguard.optim", "gradguard.monitor", "gradguard.distributed", "gradguard.reference")


@pytest.mark.parametrize("module", PUBLIC)
def test_each_public_module_imports_on_its_own(module):
    result = run_python(f"import {module}")
    assert result.returncode == 0, result.stderr


def test_no_module_imports_another_that_imports_it_back():
    """Every module of the package imported first, into an interpreter that has
    forgotten the others (all but the C extension): a cycle shows as an
    ImportError on a partially initialised module for one of them."""
    import importlib.util
    import pkgutil

    import gradguard

    # The adapters, each with what it imports; they are checked where that is installed.
    needs = {
        "gradguard.torch": ("torch",),
        "gradguard.jax": ("jax", "optax"),
        "gradguard.keras": ("keras", "torch"),
        "gradguard.lightning": ("lightning",),
        "gradguard.transformers": ("transformers", "accelerate", "torch"),
        "gradguard.watch.watcher": ("torch",),
    }
    skip = tuple(
        module for module, packages in needs.items() if any(importlib.util.find_spec(p) is None for p in packages)
    )
    skip += ("gradguard.keras",)  # keras picks its backend once per process: its own tests import it
    names = [
        info.name
        for info in pkgutil.walk_packages(gradguard.__path__, "gradguard.")
        if not any(info.name == s or info.name.startswith(s + ".") for s in skip) and ".bench." not in info.name
    ]
    code = """
import importlib, sys
import gradguard._core
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.startswith("gradguard") and m != "gradguard._core"]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as error:
        sys.exit(f"{name}: {error}")
"""
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(names) > 40  # the walk found the package's modules
