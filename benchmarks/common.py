"""Set-up shared by the benchmarks: the data they measure on and a description of the machine."""

from __future__ import annotations

import platform
from pathlib import Path


def zh_mix_spec(shared: Path) -> dict:
    """The x-LLaMA zh mix over the shared data: the same keys as recipes/data/x-llama-zh-shared.yaml."""
    return {
        "mix": "x-llama",
        "languages": ["zh"],
        "instructions": {"en": str(shared / "data/instructions/alpaca-en-zh"),
                         "zh": str(shared / "data/instructions/alpaca-en-zh")},
        "parallel": {"en-zh": str(shared / "data/parallel/alma-human-written/zhen")},
        "guard": [str(shared / "data/eval/flores101/devtest"), str(shared / "data/eval/xquad")],
        "directions": "en-x",
        "seed": 42,
    }


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
