"""Speed and memory benchmarks (``python -m experiments.bench.scoring``, ``.training``, ``.memory``,
``.ray_cluster``, ``.bootstrap``): each measures a candidate against its baseline in the same run and reports the ratio."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s ``Model name``, else the platform's) and its number of cores."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        output = ""
    name = next((line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("Model name")),
                platform.processor() or "unknown")
    return f"{name} ({os.cpu_count()} cores)"
