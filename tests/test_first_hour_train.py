"""A new user's first hour, the training half (issue 17): numbers as people write them parse; `xllama train`
ends with a short human summary and no library noise; RUN/final works with plain transformers; resuming a
finished run changes nothing; a GGUF file is converted once into a cached standard folder; a Hub id fails at
once offline."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xllama.cli import main
from xllama.errors import XllamaError
from xllama.train.config import load_recipe

ROOT = Path(__file__).resolve().parent.parent


# --- numbers in --set and in recipe files ------------------------------------------------------------------


def test_numbers_as_people_write_them_parse_in_set_and_in_recipe_files(tmp_path):
    assert load_recipe("quickstart", ["train.learning_rate=1e-5"]).train.learning_rate == 1e-5
    assert load_recipe("quickstart", ["train.learning_rate=2E-3"]).train.learning_rate == 2e-3
    recipe = (ROOT / "recipes/quickstart.yaml").read_text(encoding="utf-8")
    assert "learning_rate: 3.0e-3" in recipe
    path = tmp_path / "mine.yaml"
    path.write_text(recipe.replace("learning_rate: 3.0e-3", "learning_rate: 2e-3"), encoding="utf-8")
    loaded = load_recipe(str(path), ["train.global_batch_size=8"])
    assert loaded.train.learning_rate == 2e-3 and loaded.train.global_batch_size == 8
    # a quoted number stays a string, and the error names the file, then the key
    with pytest.raises(XllamaError, match=r"mine\.yaml: train\.learning_rate: expected float, got '1e-5'"):
        load_recipe(str(path), ["train.learning_rate='1e-5'"])
    with pytest.raises(XllamaError, match=r"mine\.yaml: train\.global_batch_size: expected int, got 1e-05"):
        load_recipe(str(path), ["train.global_batch_size=1e-5"])
    with pytest.raises(XllamaError, match=r"mine\.yaml: train: unknown key\(s\) lerning_rate"):
        load_recipe(str(path), ["train.lerning_rate=1e-5"])


# --- one short quickstart run, started as a user starts it -------------------------------------------------


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """`xllama train --recipe quickstart` for 2 steps (a checkpoint after the first), in a subprocess so that
    stdout and stderr are exactly what a user sees."""
    out = tmp_path_factory.mktemp("first-hour") / "qs"
    command = [sys.executable, "-m", "xllama", "train", "--recipe", "quickstart", "--lang", "zh", "--out", str(out),
               "--max-steps", "2", "--set", "train.global_batch_size=4", "--set", "train.save_every=1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_train_ends_with_a_human_summary_and_no_library_noise(quickstart):
    out, proc = quickstart
    final = out / "final"
    assert "{" not in proc.stdout  # the JSON summary is in the run directory, not on the screen
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert re.search(r"trained 2 of \d+ steps \(stopped early by train.max_steps\)", proc.stdout)
    assert f"model:    {final}" in proc.stdout
    assert f"xllama translate --model {final} --prompt alpaca --src en --tgt zh" in proc.stdout
    assert f"xllama eval translation --model {final} --prompt alpaca" in proc.stdout
    assert "\n\n\n" not in proc.stdout
    assert "Removed shared tensor" not in proc.stderr
    for line in proc.stderr.split("\n"):
        visible = line.split("\r")[-1]  # what stays on a terminal line after the progress bar's redraws
        if re.search(r" (INFO|WARNING|ERROR) ", line):
            assert re.match(r"\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ", visible), f"log line inside a bar: {line!r}"
        if " INFO " in line:
            assert " INFO xllama." in line, f"another library's INFO line: {line!r}"


def test_json_summary_on_request(quickstart, capsys):
    out, _ = quickstart
    saved = (out / "summary.json").read_bytes()
    assert main(["train", "--recipe", "quickstart", "--lang", "zh", "--out", str(out), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(saved)


def test_resuming_a_finished_run_changes_nothing(quickstart, capsys, caplog):
    from xllama.train.trainer import RunDir, _finished_summary

    out, _ = quickstart
    files = [out / "summary.json", out / "metrics.jsonl", out / "final/model.safetensors"]
    before = [f.read_bytes() for f in files]
    with caplog.at_level(logging.INFO, logger="xllama"):
        assert main(["train", "--recipe", "quickstart", "--lang", "zh", "--out", str(out), "--resume"]) == 0
    assert "already complete" in caplog.text
    assert f"model:    {out / 'final'}" in capsys.readouterr().out
    assert [f.read_bytes() for f in files] == before
    # asking for more steps than were trained is not "finished"
    recipe = load_recipe("quickstart", ["train.max_steps=3"])
    assert _finished_summary(RunDir(out), recipe) is None
    recipe.train.max_steps = 2
    assert _finished_summary(RunDir(out), recipe)["steps"] == 2


def test_final_model_works_with_plain_transformers_like_xllama_translate(quickstart):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from xllama.eval.generate import first_line, generate
    from xllama.prompts import translation_prompt
    from xllama.translate import load_translator, translate

    final = quickstart[0] / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.use_cache is True
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("<|endoftext|>", None)
    for config in (model.config, model.generation_config):
        assert (config.eos_token_id, config.bos_token_id, config.pad_token_id) == \
            (tokenizer.eos_token_id, None, tokenizer.pad_token_id)
    pipe = pipeline("text-generation", model=str(final), device="cpu")
    n = 24

    def plain(prompt: str) -> tuple[str, str]:
        inputs = tokenizer(prompt, return_tensors="pt")
        assert set(inputs) == {"input_ids", "attention_mask"}  # no token_type_ids for generate to refuse
        new = model.generate(**inputs, max_new_tokens=n, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        piped = pipe(prompt, max_new_tokens=n, do_sample=False, return_full_text=False)[0]["generated_text"]
        return first_line(tokenizer.decode(new, skip_special_tokens=True)), first_line(piped)

    ours, answers = load_translator(str(final), device="cpu"), {}
    # xllama translate's own prompt (this barely trained model answers it with EOS at once: plain transformers
    # must stop there too, where a config EOS of 2 would run on)
    text = "The weather is nice today."
    answers["translate"] = translate(*ours, [text], "en", "zh", prompt="alpaca", max_new_tokens=n, progress=False)[0]
    assert plain(translation_prompt("alpaca", "en", "zh", text)) == (answers["translate"],) * 2
    # prompts it continues for many tokens, through the generation engine that translate uses
    for prompt in ("Hello", "The", "1 2 3"):
        answers[prompt] = generate(*ours, [prompt], max_new_tokens=n, progress=False)[0]
        assert plain(prompt) == (answers[prompt],) * 2, prompt
    assert any(len(answer) >= 10 for answer in answers.values()), f"the test needs text to compare: {answers}"


# --- GGUF: converted once, into a cache keyed by content ---------------------------------------------------


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte -> printable character map (the alphabet of byte-level BPE vocabularies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(printable, printable)), 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return [chr(chars[b]) for b in range(256)]


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 1-layer float32 Llama GGUF with a byte-level BPE vocabulary and SmolLM2's special-token layout
    (BOS <|im_start|> 1, EOS <|im_end|> 2, no BOS added), which transformers' converter gets wrong as it does
    SmolLM2's."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_level_alphabet(), "Ġt", "he", "Ġthe"]
    hidden, heads, kv_heads, ffn, vocab = 32, 4, 2, 64, len(tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    head = hidden // heads
    shapes = {"token_embd.weight": (vocab, hidden), "blk.0.attn_q.weight": (heads * head, hidden),
              "blk.0.attn_k.weight": (kv_heads * head, hidden), "blk.0.attn_v.weight": (kv_heads * head, hidden),
              "blk.0.attn_output.weight": (hidden, heads * head), "blk.0.ffn_gate.weight": (ffn, hidden),
              "blk.0.ffn_up.weight": (ffn, hidden), "blk.0.ffn_down.weight": (hidden, ffn),
              "output.weight": (vocab, hidden)}
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        w.add_tensor(name, np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def gguf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("XLLAMA_CACHE", str(cache))
    return cache


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_gguf_is_converted_once_into_a_folder_keyed_by_content(tmp_path, gguf_cache, caplog):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from xllama.modeling import load_model, load_tokenizer

    path = write_tiny_gguf(tmp_path / "a" / "tiny.gguf")
    hf_logging.warning_once.cache_clear()  # transformers warns once per process: make this load count
    hf_records = _Records()
    hf_logging.get_logger("transformers").addHandler(hf_records)
    try:
        with caplog.at_level(logging.INFO, logger="xllama"):
            tokenizer = load_tokenizer(str(path))
            model = load_model(str(path))
    finally:
        hf_logging.get_logger("transformers").removeHandler(hf_records)
    assert not [m for m in hf_records.messages if "legacy" in m], hf_records.messages
    assert caplog.text.count("converting tiny.gguf to a Hugging Face folder") == 1
    assert "using " in caplog.text  # the model load read the folder the tokenizer load wrote
    [folder] = [p for p in (gguf_cache / "gguf").iterdir() if p.is_dir()]
    assert Path(model.name_or_path) == folder and json.loads((folder / "xllama_gguf.json").read_text())["sha256"]

    # the special tokens as the file states them (transformers' own GGUF conversion swaps them and adds a BOS)
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_start|>")
    assert tokenizer("the cat").input_ids[0] != tokenizer.bos_token_id
    raw = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert tokenizer("the cat").input_ids == raw("the cat", add_special_tokens=False).input_ids
    # the weights are the file's, de-quantised
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = torch.tensor([tokenizer("the theme").input_ids])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)

    # plain transformers uses the folder as it is, and stops on the tokenizer's EOS
    plain = AutoModelForCausalLM.from_pretrained(folder)
    assert plain.config.eos_token_id == plain.generation_config.eos_token_id == tokenizer.eos_token_id == 2
    plain.generate(**AutoTokenizer.from_pretrained(folder)("the", return_tensors="pt"), max_new_tokens=3)

    # the same bytes elsewhere reuse the folder; different bytes get their own
    caplog.clear()
    copy = tmp_path / "b" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    with caplog.at_level(logging.INFO, logger="xllama"):
        assert Path(load_model(str(copy)).name_or_path).parent == folder.parent
        assert "converting" not in caplog.text
        load_model(str(write_tiny_gguf(tmp_path / "c" / "tiny.gguf", seed=1)))
        assert "converting" in caplog.text
    assert len([p for p in (gguf_cache / "gguf").iterdir() if p.is_dir()]) == 2  # a (and its copy), c


def test_convert_command_writes_a_standard_folder(tmp_path, gguf_cache, capsys):
    from transformers import AutoModelForCausalLM

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "hf"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert AutoModelForCausalLM.from_pretrained(out).config.eos_token_id == 2
    assert main(["convert", str(path), "--out", str(out)]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.gguf")]) == 2


# --- a Hub id while the Hub is unreachable ----------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    from xllama.modeling import hub_reachable

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    hub_reachable.cache_clear()
    yield constants
    hub_reachable.cache_clear()


def test_a_hub_id_fails_at_once_when_the_hub_is_unreachable(hub, monkeypatch):
    from xllama.modeling import _hub_kwargs, hub_reachable, load_tokenizer, resolve_model

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert hub_reachable() is False
    assert _hub_kwargs(resolve_model("someorg/no-such-model")) == {"local_files_only": True}
    with pytest.raises(XllamaError, match="someorg/no-such-model.*not reachable from here"):
        load_tokenizer("someorg/no-such-model")

    hub_reachable.cache_clear()
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert hub_reachable() is False
