"""Locust as the load engine for runs over many machines: export a storm, run it, read it back.

Nothing here imports Locust: it runs only in child processes (its import patches the
whole interpreter with gevent).
"""

from .locustfile import Locustfile, build_locustfile, task_weights
from .runner import LOCUST_NOTES, LocustRun, locust_available, read_back, run_locust

__all__ = [
    "LOCUST_NOTES",
    "LocustRun",
    "Locustfile",
    "build_locustfile",
    "locust_available",
    "read_back",
    "run_locust",
    "task_weights",
]
