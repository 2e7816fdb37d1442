"""Per-layer detection of vanishing, exploding and dead gradients: the
monitor (monitor.py) over its history (history.py), typed detectors
(detectors.py) with their settings (settings.py), and the sinks its records
go to (sinks.py)."""

from .detectors import Finding
from .monitor import GradientMonitor
from .settings import MonitorSettings

__all__ = ["GradientMonitor", "Finding", "MonitorSettings"]
