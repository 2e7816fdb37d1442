"""Record what the figures were measured with in pytest-benchmark's machine info."""
import numpy as np

import gradguard as gg


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["gradguard"] = gg.config()
    machine_info["numpy"] = np.__version__
    try:
        import torch

        machine_info["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        machine_info["torch"] = "not installed"
