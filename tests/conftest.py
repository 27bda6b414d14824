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


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models run
    about 10x faster on one thread than on two contended ones (CI shares its 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="module")
def flores_dir(shared) -> Path:
    return shared / "data" / "eval" / "flores101" / "devtest"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, flores_dir) -> Path:
    """A random 2-layer Llama + a byte-level BPE tokenizer trained on FLORES, saved like any checkpoint."""
    import torch

    from xllama.data.evalsets import load_flores
    from xllama.modeling import build_bpe_tokenizer, build_model_from_config

    text = load_flores(str(flores_dir), "en")[:300] + load_flores(str(flores_dir), "zh")[:300]
    tokenizer = build_bpe_tokenizer(text, vocab_size=800)
    model = build_model_from_config({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "num_key_value_heads": 2}, vocab_size=len(tokenizer))
    with torch.no_grad():  # answers that end (newline / EOS) instead of always running to max_new_tokens
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("Ċ")] *= 1.5
        model.lm_head.weight[tokenizer.eos_token_id] *= 1.5
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
