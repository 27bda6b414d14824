"""ALMA: stage-1 blocks, stage-2 loss masks, checkpoint selection, LoRA merging and `xllama translate`.

The monolingual text of stage 1 is one side of each of ALMA's human-written parallel corpora in the shared data
(the shared data holds no monolingual corpus); models are tiny random Llamas with a BPE tokenizer trained on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from xllama.errors import XllamaError

PAIRS = "data/parallel/alma-human-written"
TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
        "tie_word_embeddings": True}


def recipe_file(tmp: Path, name: str, shared: Path, edit) -> Path:
    """A copy of recipes/<name>.yaml with ../shared pointing at the test's shared folder, edited by ``edit``."""
    from xllama.train.config import RECIPES_DIR

    text = (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").replace("../shared", str(shared))
    raw = yaml.safe_load(text)
    edit(raw)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def load(path: Path, languages=None):
    from xllama.train.config import load_recipe

    return load_recipe(str(path), languages=languages)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer(shared):
    """A small BPE tokenizer trained on a few hundred lines of each language."""
    from xllama.modeling import build_bpe_tokenizer

    lines = []
    for pair, lang in (("deen", "de"), ("deen", "en"), ("zhen", "zh")):
        path = shared / PAIRS / pair / f"train.{pair[:2]}-en.{lang}"
        lines += path.read_text(encoding="utf-8").splitlines()[:400]
    return build_bpe_tokenizer(lines, vocab_size=800)


@pytest.fixture(scope="module")
def stage1(shared, tmp_path_factory):
    """A stage-1 run of the quickstart recipe, shrunk: 2 optimiser steps on 64-token blocks."""
    from xllama.train.trainer import train

    tmp = tmp_path_factory.mktemp("alma-stage1")

    def edit(raw):
        raw["model"]["init"] = TINY
        raw["model"]["tokenizer_vocab_size"] = 800
        raw["data"].update(max_documents=300, token_budget=2048, block_size=64)
        raw["train"].update(global_batch_size=8, micro_batch_tokens=512, max_length=64, max_steps=2,
                            save_every=0)

    recipe = load(recipe_file(tmp, "alma-quickstart-stage1", shared, edit))
    summary = train(recipe, tmp / "run")
    assert summary["status"] == "completed"
    return tmp / "run"


def stage2_recipe(tmp: Path, shared: Path, model: Path, lora: bool = False):
    def edit(raw):
        raw["model"]["name_or_path"] = str(model)
        raw["data"].update(sizes=24, valid_sizes=6)
        raw["train"].update(global_batch_size=16, micro_batch_tokens=1024, max_length=256)
        if lora:
            raw["lora"].update(enabled=True, r=4, alpha=8, dropout=0.0)
            raw["train"].update(learning_rate=2.0e-3)

    return load(recipe_file(tmp, "alma-quickstart-stage2", shared, edit), languages=["de", "zh"])


# ---------------------------------------------------------------------------------------------- stage 1


def stage1_store(text, tokenizer, spec, max_length: int, directory: Path):
    """Stage 1 written to a token store in ``directory`` -> (blocks as rows of a 2-D array, prompt lengths, stats)."""
    import numpy as np

    from xllama.alma.data import tokenize_monolingual
    from xllama.train.store import StoreWriter, open_store

    with StoreWriter(directory, len(tokenizer), progress=False) as writer:
        stats = tokenize_monolingual(text, tokenizer, spec, max_length, writer)
    store = open_store(directory)
    return np.asarray(store.ids).reshape(len(store), -1), np.asarray(store.prompt_lengths), stats


def reference_blocks(text, tokenizer, spec, block: int):
    """Stage 1 computed as xllama did before the store (every language's tokens in memory, ``Generator.choice``
    per language in order): the streamed version must give exactly these blocks."""
    import numpy as np

    from xllama.alma.data import allocate_blocks, language_shares

    streams = {lang: [] for lang in spec.languages}
    rows = text.to_dict()
    for lang, ids in zip(rows["lang"], tokenizer(rows["text"])["input_ids"]):
        streams[lang] += ids + [tokenizer.eos_token_id]
    tokens = {lang: len(stream) for lang, stream in streams.items()}
    quota = allocate_blocks(language_shares(spec, tokens), spec.token_budget // block)
    rng, chosen = np.random.default_rng(spec.seed), []
    for lang in spec.languages:
        n = tokens[lang] // block
        blocks = np.asarray(streams[lang][: n * block]).reshape(n, block)
        repeats, rest = divmod(quota[lang], n)
        chosen.append(blocks[np.concatenate([np.tile(np.arange(n), repeats),
                                             np.sort(rng.choice(n, size=rest, replace=False))]).astype(np.int64)])
    return np.concatenate(chosen)


def test_monolingual_blocks_follow_budget_and_ratios(shared, tokenizer, tmp_path):
    import numpy as np

    from xllama.alma.data import allocate_blocks, load_monolingual, parse_spec

    data = {"mix": "alma", "monolingual": {"de": str(shared / PAIRS / "deen/train.de-en.de"),
                                           "zh": str(shared / PAIRS / "zhen/train.zh-en.zh"),
                                           "en": str(shared / PAIRS / "deen/train.de-en.en")},
            "ratios": {"de": 0.20, "zh": 0.19, "en": 0.17}, "token_budget": "6400", "block_size": 64,
            "max_documents": 200}
    spec = parse_spec(data, "alma-monolingual")
    text, manifest = load_monolingual(spec, max_length=128)
    assert manifest["languages"]["de"]["documents"] == 200 and len(text) == 600
    assert manifest["format"] == "xllama-corpus" and manifest["task"] == "alma-monolingual"
    assert list(manifest)[:4] == ["format", "version", "examples", "columns"] and list(manifest)[-1] == "build_seconds"
    assert text.cache_files  # memory-mapped from an Arrow file, not built in memory
    blocks, prompt_lengths, stats = stage1_store(text, tokenizer, spec, 128, tmp_path / "store")

    assert blocks.shape == (6400 // 64, 64) and stats["examples"] == 100 and stats["tokens"] == 6400
    assert set(prompt_lengths.tolist()) == {0}  # loss on every token
    expected = allocate_blocks({"de": 0.20 / 0.56, "zh": 0.19 / 0.56, "en": 0.17 / 0.56}, 100)
    assert {lang: s["blocks"] for lang, s in stats["languages"].items()} == expected
    assert sum(expected.values()) == 100
    np.testing.assert_array_equal(blocks, reference_blocks(text, tokenizer, spec, 64))
    # documents are separated by EOS, and Chinese blocks hold Chinese text
    assert (blocks == tokenizer.eos_token_id).sum() > 100
    zh_blocks = [tokenizer.decode(ids) for ids in blocks[expected["de"]:expected["de"] + expected["zh"]]]
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in b) for b in zh_blocks)
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # the scratch token files are gone


def test_temperature_sampling_and_repetition(shared, tokenizer, tmp_path):
    import numpy as np

    from xllama.alma.data import load_monolingual, parse_spec

    data = {"monolingual": {"de": str(shared / PAIRS / "deen/train.de-en.de"),
                            "is": str(shared / PAIRS / "isen/train.is-en.is")},
            "temperature": 3, "token_budget": "20K", "block_size": 32, "max_documents": 40, "seed": 5}
    spec = parse_spec(data, "alma-monolingual")
    text, _ = load_monolingual(spec, max_length=32)
    blocks, _, stats = stage1_store(text, tokenizer, spec, 32, tmp_path / "store")
    tokens = {lang: s["tokens_available"] for lang, s in stats["languages"].items()}
    weights = {lang: t ** (1 / 3) for lang, t in tokens.items()}
    for lang, s in stats["languages"].items():
        assert s["share"] == pytest.approx(weights[lang] / sum(weights.values()), abs=1e-6)
    # 625 blocks wanted from 40 documents per language: the text is repeated, and says so
    assert len(blocks) == 20000 // 32
    assert all(s["epochs"] > 1 for s in stats["languages"].values())
    np.testing.assert_array_equal(blocks, reference_blocks(text, tokenizer, spec, 32))


def test_stage1_errors_leave_no_store_and_no_scratch(shared, tokenizer, tmp_path):
    from xllama.alma.data import load_monolingual, parse_spec

    short = tmp_path / "short.is"
    short.write_text("Halló.\n", encoding="utf-8")
    spec = parse_spec({"monolingual": {"de": str(shared / PAIRS / "deen/train.de-en.de"), "is": str(short)},
                       "ratios": {"de": 1, "is": 1}, "token_budget": 4096, "block_size": 64, "max_documents": 50},
                      "alma-monolingual")
    text, _ = load_monolingual(spec, max_length=64)
    out = tmp_path / "run"
    with pytest.raises(XllamaError, match=r"monolingual\.is: its share is 32 blocks .*less than one block"):
        stage1_store(text, tokenizer, spec, 64, out / "store")
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(XllamaError, match=r"block_size \(64\) exceeds train\.max_length \(32\)"):
        stage1_store(text, tokenizer, spec, 32, out / "store")
    other = parse_spec({"monolingual": {"de": "x"}, "token_budget": 4096, "block_size": 64}, "alma-monolingual")
    with pytest.raises(XllamaError, match="the corpus has language 'is', which is not one of de"):
        stage1_store(text, tokenizer, other, 64, out / "store")
    assert not out.exists() or not any(out.iterdir())
    empty = tmp_path / "empty.de"
    empty.write_text("\n  \n", encoding="utf-8")
    spec = parse_spec({"monolingual": {"de": str(empty)}, "token_budget": 10}, "alma-monolingual")
    with pytest.raises(XllamaError, match=r"monolingual\.de: no non-empty documents"):
        load_monolingual(spec, max_length=64)


STAGE1_CHILD = """
import json, sys, threading, time
from pathlib import Path

import datasets, numpy, pyarrow, tqdm.auto  # noqa: F401  (imported before the baseline)
from xllama.alma.data import load_monolingual, parse_spec, tokenize_monolingual
from xllama.train.store import StoreWriter

corpus, out = Path(sys.argv[1]), Path(sys.argv[2])


class ByteTokenizer:
    # ids = the UTF-8 bytes, then BOS 256 and EOS 257 (byte-level, as ByT5): tens of MB of text in seconds
    eos_token_id, is_fast = 257, False

    def __len__(self):
        return 258

    def __call__(self, texts, add_special_tokens=True, return_attention_mask=False):
        return {"input_ids": [[256, *t.encode()] for t in texts]}


def status_mib(key):  # RssAnon: memory the process must hold (not file pages the kernel may drop); VmHWM: peak RSS
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024


def anon_mib():
    return status_mib("RssAnon")


peak, done = [anon_mib()], threading.Event()


def sample():
    while not done.is_set():
        peak.append(anon_mib())
        time.sleep(0.005)


threading.Thread(target=sample, daemon=True).start()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec
base_anon, base_rss = anon_mib(), status_mib("VmHWM")
spec = parse_spec({"monolingual": {"de": str(corpus / "de.txt"), "en": str(corpus / "en.txt")},
                   "ratios": {"de": 0.5, "en": 0.5}, "token_budget": "4M", "block_size": 256,
                   "accept_language_mismatch": True}, "alma-monolingual")  # random letters: no language
text, _ = load_monolingual(spec, 256)
with StoreWriter(out, 258, progress=False) as writer:
    stats = tokenize_monolingual(text, ByteTokenizer(), spec, 256, writer)
done.set()
print(json.dumps({"anon_mib": max(peak) - base_anon, "tokens": sum(s["tokens_available"] for s in
                  stats["languages"].values()), "rss_mib": status_mib("VmHWM") - base_rss}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RssAnon from /proc (Linux)")
def test_stage1_memory_does_not_grow_with_the_corpus(tmp_path):
    """Stage 1 on 20M characters (2 languages, 133K documents) in a child process: the tokens go to scratch files
    and the store, not to RAM. The in-memory version (every document a Python string, every language's tokens in
    arrays) needed +298 MiB of anonymous memory and +300 MiB peak RSS for this corpus; the streamed one +29 MiB and
    +57 MiB (file pages of the memory-mapped text and scratch files included), on the 2-core dev box (load 8)."""
    import subprocess
    import sys

    import numpy as np

    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz    ", np.uint8)
    for lang in ("de", "en"):
        text = letters[rng.integers(0, len(letters), 10_000_000)]
        text[rng.integers(0, len(text), len(text) // 150)] = ord("\n")  # documents of ~150 characters
        text.tofile(tmp_path / f"{lang}.txt")
    (tmp_path / "child.py").write_text(STAGE1_CHILD, encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path), str(tmp_path / "store")],
                          capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tokens"] > 20_000_000  # bytes + BOS/EOS: the whole corpus was tokenised
    assert result["anon_mib"] < 60, result
    assert result["rss_mib"] < 120, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "de.txt", "en.txt", "store"]


def test_hub_corpora_stream_from_a_mirror(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xllama.data.sources import load_documents as read_documents

    docs = [f"Dokument Nummer {i}." for i in range(50)]
    files = tmp_path / "owner/corpus/de"
    files.mkdir(parents=True)
    pq.write_table(pa.table({"text": docs, "id": list(range(50))}), files / "de_part_00000.parquet")
    export = tmp_path / "owner/plain/de/train"
    export.mkdir(parents=True)
    pq.write_table(pa.table({"content": docs}), export / "0000.parquet")
    monkeypatch.setenv("XLLAMA_HUB_MIRROR", str(tmp_path))

    got, info = read_documents("hf:owner/corpus/de/*.parquet", "de", max_documents=7)
    assert got == docs[:7] and info["hub"] == "owner/corpus"
    got, _ = read_documents("hf:owner/plain:de", "de", text_field="content", max_chars=100)
    assert got == docs[: len(got)] and 100 <= sum(map(len, got)) < 100 + len(docs[0]) + 1
    with pytest.raises(XllamaError, match="no field 'text'"):
        read_documents("hf:owner/plain:de", "de")


# ---------------------------------------------------------------------------------------------- stage 2


def test_loss_mask_covers_exactly_target_and_eos(shared, tokenizer, tmp_path):
    """Stage 2 through the task protocol: ``tokenize(text, tokenizer, recipe, writer)`` fills the token store."""
    import numpy as np

    from xllama.alma.data import load_text, tokenize, tokenize_translations
    from xllama.data.mix import load_mix, mix_stats, write_mix
    from xllama.prompts import alma_prompt
    from xllama.train.packing import packed_row
    from xllama.train.store import StoreWriter, open_store

    def edit(raw):
        raw["data"] = {"parallel": {"de-en": str(shared / PAIRS / "deen"), "zh-en": str(shared / PAIRS / "zhen")},
                       "valid": {"de-en": str(shared / PAIRS / "deen/valid.de-en.json")}, "sizes": 15,
                       "valid_sizes": 5}
        raw["train"]["max_length"] = 2048

    recipe = load(recipe_file(tmp_path, "alma-quickstart-stage2", shared, edit))
    text, manifest = load_text(recipe)
    assert manifest["format"] == "xllama-mix" and manifest["task"] == "alma-parallel"
    assert list(manifest)[:4] == ["format", "version", "examples", "columns"] and list(manifest)[-1] == "build_seconds"
    assert manifest["by_direction"] == {"de-en": 15, "en-de": 15, "zh-en": 15, "en-zh": 15}
    assert manifest["valid"]["by_direction"] == {"de-en": 5, "en-de": 5} and manifest["valid_examples"] == 10
    # every side of every pair file went through the language check
    checked = {r["source"] for r in manifest["language_check"] + manifest["valid"]["language_check"]}
    assert checked == {f"parallel.{p} ({lang} side)" for p in ("de-en", "zh-en") for lang in p.split("-")}
    # the run's text is a mix on disk: `xllama data stats RUN/data` reads it
    write_mix(text, manifest, tmp_path / "data", progress=False)
    assert load_mix(tmp_path / "data")[0]["split"] == text["split"]
    assert mix_stats(text)["translation"]["examples"] == 70
    with StoreWriter(tmp_path / "store", len(tokenizer), progress=False) as writer:
        stats = tokenize(text, tokenizer, recipe, writer)
    store = open_store(tmp_path / "store")
    assert stats["examples"] == len(store) == 60 and stats["boundary_merged"] == 0
    assert stats["target_tokens"] == int((store.lengths - store.prompt_lengths).sum())

    rows = [r for r in text if r["split"] == "train"]
    eos = tokenizer.eos_token_id
    for i, row in enumerate(rows):
        ids = np.asarray(store.ids[store.offsets[i]:store.offsets[i + 1]]).tolist()
        plen = int(store.prompt_lengths[i])
        prompt = alma_prompt(*row["direction"].split("-"), row["input"])
        assert tokenizer.decode(ids[:plen]) == prompt
        assert ids[-1] == eos and eos not in ids[:-1]
        assert tokenizer.decode(ids[plen:-1]) == " " + row["output"]
        # what the trainer actually trains on: labels derived from prompt_length by the packer
        labels = packed_row(store, [i])["labels"][0]
        trained = labels[labels != -100]
        assert trained.tolist() == ids[plen:]
        assert tokenizer.decode(trained[:-1]) == " " + row["output"]

    # the validation pairs, in memory with their direction (checkpoint selection)
    valid, valid_stats = tokenize_translations(text, tokenizer, 512, split="valid", keep_direction=True)
    assert len(valid) == valid_stats["examples"] == 10
    assert sorted(set(valid["direction"])) == ["de-en", "en-de"]
    with pytest.raises(XllamaError, match="no valid example fits in train.max_length=8 tokens"):
        tokenize_translations(text, tokenizer, 8, split="valid")


def test_stage2_text_of_runs_before_the_mixer_still_tokenises(shared, tokenizer):
    """Runs whose stage-2 text was written with the columns src, tgt, source, target, split (before stage 2's
    pairs were an xllama mix) tokenise to the same examples, so they resume and validate."""
    from datasets import Dataset

    from xllama.alma.data import load_parallel_text, parse_spec, tokenize_translations

    spec = parse_spec({"parallel": {"de-en": str(shared / PAIRS / "deen")}, "sizes": 10, "valid_sizes": 4,
                       "valid": {"de-en": str(shared / PAIRS / "deen/valid.de-en.json")}}, "alma-parallel")
    text, _ = load_parallel_text(spec)
    rows = text.to_dict()
    old = Dataset.from_dict({"src": [d.split("-")[0] for d in rows["direction"]],
                             "tgt": [d.split("-")[1] for d in rows["direction"]],
                             "source": rows["input"], "target": rows["output"], "split": rows["split"]})
    for split, count in (("train", 20), ("valid", 8)):
        new, new_stats = tokenize_translations(text, tokenizer, 4096, split, keep_direction=True)
        was, was_stats = tokenize_translations(old, tokenizer, 4096, split, keep_direction=True)
        assert new.to_dict() == was.to_dict() and new_stats == was_stats and len(new) == count


def test_recipes_load_and_validate():
    from xllama.alma.data import ALMA_RATIOS, parse_spec
    from xllama.train.config import load_recipe

    for name in ("alma-7b-stage1", "alma-7b-stage2", "alma-7b-lora", "alma-quickstart-stage1",
                 "alma-quickstart-stage2"):
        recipe = load_recipe(name)
        assert recipe.task.startswith("alma-") and parse_spec(recipe) is not None
    stage1 = parse_spec(load_recipe("alma-7b-stage1"))
    assert stage1.ratios == pytest.approx(ALMA_RATIOS)
    assert stage1.token_budget == 20 * 10**9
    lora = load_recipe("alma-7b-lora")
    assert (lora.lora.r, lora.lora.alpha, lora.lora.dropout, lora.lora.target_modules) == (16, 32, 0.05, ["down_proj"])
    # --lang keeps a subset (and English); ratios are renormalised over it
    subset = parse_spec(load_recipe("alma-7b-stage1", languages=["de", "zh"]))
    assert list(subset.sources) == ["de", "zh", "en"]
    assert sum(subset.ratios.values()) == pytest.approx(1.0)
    assert set(parse_spec(load_recipe("alma-7b-stage2", languages=["zh"])).pairs) == {"zh-en"}


@pytest.mark.parametrize("data, message", [
    ({"monolingual": {"de": "x"}, "token_budget": 10, "ratio": {}}, r"recipe\.data\.ratio: unknown key"),
    ({"monolingual": {"de": "x"}, "token_budget": 10, "valid": {}}, "belongs to the other ALMA stage"),
    ({"mix": "x-llama", "monolingual": {"de": "x"}, "token_budget": 10}, r"data\.mix: 'x-llama'"),
    ({"monolingual": {"de": "x", "en": "y"}, "ratios": {"de": 1}, "token_budget": 10}, "no ratio for en"),
    ({"monolingual": {"de": "x"}, "ratios": {"de": 1, "fr": 1}, "token_budget": 10},
     r"ratios\.fr: not one of this spec's languages \(de\)"),
    ({"monolingual": {"de": "x"}, "ratios": {"de": 1}, "temperature": 2, "token_budget": 10}, "not both"),
    ({"monolingual": {"de": "x"}}, "token_budget"),
    ({"monolingual": {"de": "x"}, "token_budget": "lots"}, "token count"),
    ({"monolingual": {"xx": "x"}, "token_budget": 10}, r"monolingual\.xx: unknown language code"),
    ({"monolingual": {"de": "x"}, "token_budget": 10, "languages": ["zh"]}, "no monolingual source for zh"),
])
def test_monolingual_recipe_errors(data, message):
    from xllama.alma.data import parse_spec

    with pytest.raises(XllamaError, match=message):
        parse_spec(data, "alma-monolingual")


@pytest.mark.parametrize("data, message", [
    ({"parallel": {"de-en": "x"}, "token_budget": 10}, r"token_budget: unknown key .*other ALMA stage"),
    ({"parallel": {"deen": "x"}}, r"parallel\.deen: bad language pair"),
    ({"parallel": {"de-en": "x"}, "valid": {"zh-en": "y"}}, r"valid\.zh-en: no training pairs"),
    ({"parallel": {"de-fr": "x"}, "directions": "x-en"}, "needs English"),
    ({"parallel": {"de-en": "x"}, "directions": "sideways"}, "not one of both"),
    ({"parallel": {"de-en": "x"}, "sizes": {"de-en": 0}}, r"sizes\.de-en: expected an integer >= 1"),
    ({"parallel": {}}, r"parallel: expected a mapping"),
])
def test_parallel_recipe_errors(data, message):
    from xllama.alma.data import parse_spec

    with pytest.raises(XllamaError, match=message):
        parse_spec(data, "alma-parallel")


def test_bad_parallel_locations_are_clear_errors(shared, tmp_path):
    from xllama.alma.data import load_parallel_text, parse_spec

    spec = parse_spec({"parallel": {"de-en": str(tmp_path / "nowhere")}}, "alma-parallel")
    with pytest.raises(XllamaError, match="nowhere"):
        load_parallel_text(spec)
    deen = str(shared / PAIRS / "deen")
    spec = parse_spec({"parallel": {"de-en": deen}, "valid": {"de-en": deen}}, "alma-parallel")
    with pytest.raises(XllamaError, match="is a folder; give the validation file"):
        load_parallel_text(spec)


def test_guard_removes_evaluation_sentences(shared, tmp_path):
    from xllama.alma.data import load_parallel_text, parse_spec

    german = (shared / PAIRS / "deen/train.de-en.de").read_text(encoding="utf-8").splitlines()
    guard = tmp_path / "test.de"
    guard.write_text("\n".join(german[:3]) + "\n", encoding="utf-8")
    spec = parse_spec({"parallel": {"de-en": str(shared / PAIRS / "deen")}, "guard": [str(guard)]}, "alma-parallel")
    text, manifest = load_parallel_text(spec)
    assert manifest["removed_by_source"]["translation_de-en"]["contamination"] >= 3
    assert not set(german[:3]) & (set(text["input"]) | set(text["output"]))


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_stage1_stage2_translate_end_to_end(shared, stage1, tmp_path):
    """Stage 1 (fixture) -> stage 2 with checkpoint selection -> `xllama translate` on a file."""
    from xllama.alma.stage2 import train_and_select
    from xllama.cli import main

    stats = json.loads((stage1 / "store/stats.json").read_text())
    assert stats["task"] == "alma-monolingual" and set(stats["languages"]) == {"de", "cs", "is", "zh", "ru", "en"}

    recipe = stage2_recipe(tmp_path, shared, stage1 / "final")
    summary = train_and_select(recipe, tmp_path / "stage2")
    selection = json.loads((tmp_path / "stage2/validation.json").read_text())
    names = [c["name"] for c in selection["candidates"]]
    assert len(names) == 2 and names[-1] == "final" and names[0].startswith("step-")
    assert selection["candidates"][0]["step"] == selection["steps_per_epoch"]
    assert set(selection["candidates"][0]["by_direction"]) == {"de-en", "en-de", "zh-en", "en-zh"}
    best = min(selection["candidates"], key=lambda c: c["loss"])
    assert selection["best"] == best["name"] and Path(summary["best_model"]).resolve().is_dir()
    assert (tmp_path / "stage2/best/config.json").is_file()

    source = tmp_path / "in.de"
    source.write_text("Guten Morgen!\n\nWie geht es dir?\n", encoding="utf-8")
    out = tmp_path / "out.en"
    rc = main(["translate", "--model", str(tmp_path / "stage2/best"), "--src", "de", "--tgt", "en",
               "--input", str(source), "--output", str(out), "--max-new-tokens", "6"])
    assert rc == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # blank line kept, one line per segment


@pytest.mark.slow
def test_lora_merged_equals_base_plus_adapter(shared, stage1, tmp_path, monkeypatch):
    """A LoRA stage-2 run: the merged model it saves gives the same logits as base + adapter; a checkpoint that
    wins the selection is exported like final/ (merged model + adapter)."""
    import torch

    import xllama.alma.validate as validate
    from xllama.alma.stage2 import select_best, train_and_select
    from xllama.modeling import build_model_from_config, load_tokenizer
    from xllama.train.trainer import RunDir
    from xllama.translate import load_translator

    recipe = stage2_recipe(tmp_path, shared, stage1 / "final", lora=True)
    summary = train_and_select(recipe, tmp_path / "lora")
    final = tmp_path / "lora/final"
    assert summary["status"] == "completed" and (final / "adapter/adapter_config.json").is_file()
    assert len(summary["validation"]["candidates"]) == 2

    merged, tok = load_translator(str(final), device="cpu")
    adapted, _ = load_translator(str(stage1 / "final"), adapter=str(final / "adapter"), device="cpu")
    base, _ = load_translator(str(stage1 / "final"), device="cpu")
    ids = torch.tensor([tok("Translate this from German to English:\nGerman: Hallo\nEnglish:")["input_ids"]])
    with torch.no_grad():
        a, b, c = (m(input_ids=ids).logits for m in (merged, adapted, base))
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert (a - c).abs().max() > 1e-5  # the adapter changed the model
    # the adapter alone finds its base through adapter_config.json
    alone, _ = load_translator(str(final / "adapter"), device="cpu")
    with torch.no_grad():
        assert torch.allclose(alone(input_ids=ids).logits, a, atol=1e-5)

    # a base of another shape is refused with a clear error
    other = tmp_path / "other"
    tokenizer = load_tokenizer(str(stage1 / "final"))
    build_model_from_config(dict(TINY, hidden_size=48, intermediate_size=96), vocab_size=len(tokenizer)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(XllamaError, match="does not match the base model"):
        load_translator(str(other), adapter=str(final / "adapter"), device="cpu")

    # force the epoch-1 checkpoint to win: best/ becomes its export, different from final/
    real = validate.validation_loss
    fake = lambda model, *a, desc="", **k: {**real(model, *a, desc=desc, **k), **({"loss": 0.0} if "step-" in desc else {})}  # noqa: E731
    monkeypatch.setattr(validate, "validation_loss", fake)
    selection = select_best(RunDir(tmp_path / "lora"))
    best = tmp_path / "lora/best"
    assert selection["best"].startswith("step-") and not best.is_symlink()
    assert (best / "config.json").is_file() and (best / "adapter/adapter_config.json").is_file()
    exported, _ = load_translator(str(best), device="cpu")
    via_adapter, _ = load_translator(str(best / "adapter"), device="cpu")
    with torch.no_grad():
        e = exported(input_ids=ids).logits
        assert torch.allclose(e, via_adapter(input_ids=ids).logits, atol=1e-5)
        assert (e - a).abs().max() > 1e-6  # one epoch of training is not two


@pytest.mark.parametrize("argv, message", [
    (["--src", "xx", "--tgt", "en", "hello"], "unknown language pair xx-en"),
    (["--src", "de", "--tgt", "de", "hallo"], "same language"),
    (["--src", "de", "--tgt", "en"], "nothing to translate"),
    (["--src", "de", "--tgt", "en", "  "], "empty"),
    (["--src", "de", "--tgt", "en", "--input", "EMPTY"], "is empty"),
    (["--src", "de", "--tgt", "en", "--input", "MISSING"], "input file not found"),
    (["--src", "de", "--tgt", "en", "--adapter", "NOT_ADAPTER", "hallo"], "not a peft adapter folder"),
])
def test_translate_errors(argv, message, tmp_path, capsys):
    from xllama.cli import main

    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    argv = [a.replace("EMPTY", str(tmp_path / "empty.txt")).replace("MISSING", str(tmp_path / "no.txt"))
            .replace("NOT_ADAPTER", str(tmp_path)) for a in argv]
    assert main(["translate", "--model", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.slow
def test_smollm_gguf_translates_a_file(smollm_gguf, tmp_path):
    from xllama.cli import main

    source = tmp_path / "in.en"
    source.write_text("The cat sleeps.\nI like tea.\nGood morning!\nWhere is the station?\nThank you very much.\n",
                      encoding="utf-8")
    out = tmp_path / "out.de"
    rc = main(["translate", "--model", str(smollm_gguf), "--src", "en", "--tgt", "de", "--input", str(source),
               "--output", str(out), "--max-new-tokens", "16", "--batch-size", "5"])
    assert rc == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    assert sum(bool(line.strip()) for line in lines) >= 3
    assert not any("Translate this" in line for line in lines)  # answers, not echoed prompts
