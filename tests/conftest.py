"""Shared fixtures: where the real data and model live (../shared or $XLLAMA_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xllama.io import shared_dir

SHARED = shared_dir()
GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder; tests that need it are skipped (not failed) where it is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set XLLAMA_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def smollm_gguf(shared) -> Path:
    if not GGUF.is_file():
        pytest.skip(f"shared model not found at {GGUF}")
    return GGUF
