"""Shared setup of the benchmarks: both libraries on 2 threads (the figures
the issues ask for), and what they ran with in pytest-benchmark's machine info."""

import numpy as np
import pytest

import gradguard as gg
from gradguard.bench.harness import torch


@pytest.fixture(scope="session", autouse=True)
def two_threads():
    before = gg.get_num_threads()
    gg.set_num_threads(2)
    if torch is not None:
        torch.set_num_threads(2)
    yield
    gg.set_num_threads(before)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["gradguard"] = gg.config()
    machine_info["numpy"] = np.__version__
    try:
        import torch

        machine_info["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        machine_info["torch"] = "not installed"
