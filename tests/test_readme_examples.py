"""The README's framework examples, each run in a fresh interpreter when its
framework is installed (so the README cannot drift from the code)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS = {
    "numpy": [],
    "torch": ["torch", "tensorboard"],
    "jax": ["jax", "optax"],
    "lightning": ["torch", "lightning"],
    "keras": ["torch", "keras"],
    "distributed": ["torch"],
    "transformers": ["torch", "transformers", "accelerate"],
}


def _examples():
    blocks = re.findall(r"```python\n(# example: (\w+)\n.*?)```", README.read_text(), flags=re.S)
    return {name: code for code, name in blocks}


def test_every_framework_has_an_example():
    assert set(_examples()) == set(NEEDS)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_readme_example_runs(name, tmp_path):
    missing = [module for module in NEEDS[name] if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    environment = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    command = [sys.executable, "-c", _examples()[name]]
    if name == "distributed":  # two processes, started as the example says
        script = tmp_path / "example.py"
        script.write_text(_examples()[name])
        environment.update(GRADGUARD_NUM_THREADS="1", OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "the example prints its result"
