"""ALMA-R (CPO, task alma-cpo): the loss, packing of triplets, training, LoRA, resume, preference data (files,
the ALMA-R Hub layout through a mirror, the guard, bad input), `xllama data preference` and stage 3 end to end.

Models are tiny random Llamas with a BPE tokenizer trained on a few hundred lines of the shared pairs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from xllama.errors import XllamaError

PAIRS = "data/parallel/alma-human-written"
TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
        "tie_word_embeddings": True}


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pairs(shared):
    de = (shared / PAIRS / "deen/train.de-en.de").read_text(encoding="utf-8").splitlines()[:400]
    en = (shared / PAIRS / "deen/train.de-en.en").read_text(encoding="utf-8").splitlines()[:400]
    return [(d, e) for d, e in zip(de, en) if 10 < len(d) < 90 and 10 < len(e) < 90]


@pytest.fixture(scope="module")
def tokenizer(pairs):
    from xllama.modeling import build_bpe_tokenizer

    return build_bpe_tokenizer([t for p in pairs for t in p], vocab_size=600)


@pytest.fixture(scope="module")
def base_model(tokenizer, tmp_path_factory):
    """A saved tiny model + tokenizer: the stand-in for a stage-2 model."""
    from xllama.modeling import build_model_from_config

    path = tmp_path_factory.mktemp("stage2") / "best"
    model = build_model_from_config(dict(TINY), vocab_size=len(tokenizer), seed=0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def synthetic_triplets(pairs, n: int) -> list[dict]:
    """Preferred: the reference; dis-preferred: its words reversed (a fluent-looking but wrong translation)."""
    out = []
    for d, e in pairs[:n]:
        out.append({"direction": "de-en", "source": d, "preferred": e, "dispreferred": " ".join(e.split()[::-1])})
    return out


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def cpo_recipe(tmp: Path, model: Path, data: str, **train):
    from xllama.train.config import RECIPES_DIR, load_recipe

    raw = yaml.safe_load((RECIPES_DIR / "alma-r-quickstart.yaml").read_text(encoding="utf-8"))
    raw["model"]["name_or_path"] = str(model)
    raw["data"]["preference"] = data
    raw["train"].update({"global_batch_size": 8, "micro_batch_tokens": 1024, "max_length": 256, "save_every": 0,
                         "learning_rate": 1e-2, **train})
    raw["lora"]["target_modules"] = ["q_proj", "v_proj", "down_proj"]
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return load_recipe(str(path))


def store_of(tokenizer, triplets, max_length=256):
    """Triplet records -> the token store the trainer packs (through the task's own tokenize and the on-disk
    store, read back into memory)."""
    import tempfile

    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    from xllama.alma.cpo import tokenize
    from xllama.train.config import Recipe, TrainConfig
    from xllama.train.packing import TokenStore
    from xllama.train.store import StoreWriter, open_store

    cols = {"src": [], "tgt": [], "source": [], "preferred": [], "dispreferred": []}
    for t in triplets:
        src, tgt = t["direction"].split("-")
        for k, v in (("src", src), ("tgt", tgt), ("source", t["source"]), ("preferred", t["preferred"]),
                     ("dispreferred", t["dispreferred"])):
            cols[k].append(v)
    recipe = Recipe(task="alma-cpo", train=TrainConfig(max_length=max_length, micro_batch_tokens=4 * max_length))
    with tempfile.TemporaryDirectory() as tmp:
        with StoreWriter(Path(tmp) / "store", len(tokenizer), progress=False) as writer:
            stats = tokenize(Dataset(pa.table(cols)), tokenizer, recipe, writer)
        store = open_store(Path(tmp) / "store")
        assert stats["examples"] == len(store) == len(triplets)
        assert stats["preferred_target_tokens"] == sum(n - p for (n, p), _ in store.segments)
        assert stats["dispreferred_target_tokens"] == sum(n - p for _, (n, p) in store.segments)
        return TokenStore(np.array(store.ids), np.array(store.offsets), np.array(store.prompt_lengths),
                          store.segments)


def tiny_model(tokenizer, seed=0):
    from xllama.modeling import build_model_from_config

    return build_model_from_config(dict(TINY), vocab_size=len(tokenizer), seed=seed)


def as_tensors(row):
    import torch

    return {k: torch.from_numpy(v) for k, v in row.items()}


# ---------------------------------------------------------------------------------------------- the loss


def test_cpo_term_matches_hand_value_and_prefers_the_winner():
    import torch

    from xllama.train.loss import cpo_loss

    chosen = torch.tensor([-2.0, -7.0], requires_grad=True)
    rejected = torch.tensor([-5.0, -3.0], requires_grad=True)
    loss = cpo_loss(chosen, rejected, beta=0.1)
    # -log sigmoid(0.1 * 3) = log(1 + e^-0.3); -log sigmoid(0.1 * -4) = log(1 + e^0.4)
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-0.3)), math.log1p(math.exp(0.4))], rel=1e-6)
    loss.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises log p(y_w), lowers log p(y_l)
    assert chosen.grad.tolist() == pytest.approx([-0.1 / (1 + math.exp(0.3)), -0.1 / (1 + math.exp(-0.4))])


def test_objective_equals_hand_computed_loss(pairs, tokenizer):
    """The objective on a packed row of 3 triplets = the formula computed sequence by sequence, by hand."""
    import torch

    from xllama.alma.cpo import CPO
    from xllama.train.packing import packed_row

    store = store_of(tokenizer, synthetic_triplets(pairs, 3))
    model = tiny_model(tokenizer)
    objective = CPO(beta=0.1, nll_weight=1.0)
    examples = [0, 1, 2]
    totals = objective.step_totals(store, examples)
    loss, sums = objective(model, as_tensors(packed_row(store, examples)), totals)

    with torch.no_grad():
        seq_logps, chosen_nll, chosen_tokens = [], 0.0, 0
        for i in examples:
            pair = []
            for k, (ids, p) in enumerate(store.sequences(i)):
                x = torch.tensor(ids, dtype=torch.long)[None]
                logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
                total = sum(float(logp[t - 1, x[0, t]]) for t in range(p, len(ids)))  # target tokens + EOS
                pair.append(total)
                if k == 0:
                    chosen_nll -= total
                    chosen_tokens += len(ids) - p
            seq_logps.append(pair)
    assert totals == {"triplets": 3, "chosen_tokens": chosen_tokens}
    preference = sum(math.log1p(math.exp(-0.1 * (w - l))) for w, l in seq_logps) / 3
    expected = preference + chosen_nll / chosen_tokens
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    metrics = objective.metrics({k: float(v) for k, v in sums.items()}, totals)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    # sequence log-probs of a few hundred nats in float32 vs float64: agree to ~1e-5 nats
    assert metrics["reward_margin"] == pytest.approx(sum(0.1 * (w - l) for w, l in seq_logps) / 3, abs=1e-5)
    assert metrics["preference_accuracy"] == sum(w > l for w, l in seq_logps) / 3


def test_packed_and_unpacked_triplets_give_the_same_loss_and_gradients(pairs, tokenizer):
    import torch

    from xllama.alma.cpo import CPO
    from xllama.train.packing import pack, packed_row

    store = store_of(tokenizer, synthetic_triplets(pairs, 6))
    model = tiny_model(tokenizer)
    objective = CPO(beta=0.1)
    examples = list(range(6))
    totals = objective.step_totals(store, examples)
    bins = pack(examples, store.lengths, int(store.lengths.sum()))
    assert len(bins) == 1  # everything in one packed row

    def run(groups):
        model.zero_grad()
        total = 0.0
        for group in groups:
            loss, _ = objective(model, as_tensors(packed_row(store, group)), totals)
            loss.backward()
            total += float(loss.detach())
        return total, [p.grad.clone() for p in model.parameters()]

    packed_loss, packed_grads = run(bins)
    alone_loss, alone_grads = run([[i] for i in examples])
    assert packed_loss == pytest.approx(alone_loss, rel=1e-5)
    for a, b in zip(packed_grads, alone_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_triplets_are_packed_as_one_unit(pairs, tokenizer):
    """Both sequences of a triplet land in the same micro-batch, preferred before dis-preferred."""
    from xllama.train.packing import packed_row, plan_step

    store = store_of(tokenizer, synthetic_triplets(pairs, 12))
    plan = plan_step(0, store, 12, 600, 2, seed=1)
    for rank in plan:
        for mb in rank:
            row = packed_row(store, mb)
            seq = row["sequence_ids"][0]
            assert seq.max() + 1 == 2 * len(mb)
            for k, i in enumerate(mb):  # sequence 2k is example i's preferred, 2k+1 its dis-preferred
                (n_w, _), (n_l, _) = store.segments[i]
                assert (seq == 2 * k).sum() == n_w and (seq == 2 * k + 1).sum() == n_l


# ---------------------------------------------------------------------------------------------- training


def margins(model, store):
    """Mean log p(y_w|x) - log p(y_l|x) over the store's triplets."""
    import torch

    from xllama.train.loss import sequence_logprobs, token_logprobs
    from xllama.train.packing import packed_row

    with torch.no_grad():
        row = as_tensors(packed_row(store, list(range(len(store)))))
        seq = sequence_logprobs(token_logprobs(model, row), row["sequence_ids"])
    return float((seq[0::2] - seq[1::2]).mean())


def test_training_raises_the_preference_margin(pairs, tokenizer, base_model, tmp_path):
    from xllama.modeling import load_model
    from xllama.train.trainer import RunDir, train

    data = write_jsonl(tmp_path / "triplets.jsonl", synthetic_triplets(pairs, 32))
    recipe = cpo_recipe(tmp_path, base_model, str(data), epochs=3, lr_scheduler="constant")
    recipe.lora.enabled = False
    summary = train(recipe, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 12
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert {"preference_accuracy", "reward_margin", "nll_loss", "preference_loss"} <= set(records[0])
    from xllama.train.store import open_store

    store = open_store(RunDir(tmp_path / "run").store)
    before = margins(load_model(str(base_model), dtype="float32"), store)
    after = margins(load_model(str(tmp_path / "run/final"), dtype="float32"), store)
    assert after > before + 1.0, (before, after)
    assert records[-1]["preference_accuracy"] > records[0]["preference_accuracy"]


@pytest.mark.parametrize("lora", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_interrupted_and_resumed_equals_uninterrupted(pairs, base_model, tmp_path, lora):
    """Interrupted after 2 steps and resumed = uninterrupted: loss curve, margins and the trained weights."""
    import torch
    from safetensors.torch import load_file

    from xllama.train.trainer import train

    data = write_jsonl(tmp_path / "triplets.jsonl", synthetic_triplets(pairs, 24))
    recipe = cpo_recipe(tmp_path, base_model, str(data), epochs=1, save_every=2)
    recipe.lora.enabled = lora
    whole = train(recipe, tmp_path / "whole")
    part = train(recipe, tmp_path / "part", stop_after=2)
    assert part["status"] == "interrupted"
    resumed = train(recipe, tmp_path / "part", resume=True)
    assert whole["status"] == resumed["status"] == "completed" and whole["steps"] == 3

    def curve(run):
        return [(r["step"], r["loss"], r["reward_margin"])
                for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())]

    for (s1, l1, m1), (s2, l2, m2) in zip(curve("whole"), curve("part"), strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-6) and m1 == pytest.approx(m2, rel=1e-5, abs=1e-7)
    name = "adapter/adapter_model.safetensors" if lora else "model.safetensors"
    a, b = load_file(tmp_path / "whole/final" / name), load_file(tmp_path / "part/final" / name)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_lora_path_trains_an_adapter(pairs, base_model, tmp_path):
    """LoRA (the recipes' default): only the adapter trains; final/ holds the adapter and a merged model."""
    from safetensors.torch import load_file

    from xllama.train.trainer import train

    data = write_jsonl(tmp_path / "triplets.jsonl", synthetic_triplets(pairs, 16))
    recipe = cpo_recipe(tmp_path, base_model, str(data), epochs=1)
    assert recipe.lora.enabled and recipe.task == "alma-cpo"
    summary = train(recipe, tmp_path / "run")
    assert summary["status"] == "completed"
    adapter = load_file(tmp_path / "run/final/adapter/adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter) and any("down_proj" in k for k in adapter)
    assert any(float(v.abs().sum()) > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it trained
    assert (tmp_path / "run/final/config.json").is_file()  # the merged copy


# ---------------------------------------------------------------------------------------------- data


def alma_r_row(lang="de", delta=0.0, required=""):
    t = {"language_pair": f"{lang}-en", lang: f"Quelle {lang}", "en": "the reference",
         f"gpt4_{lang}": "gpt4 nach de", f"alma_{lang}": "alma nach de", "gpt4_en": "gpt4 to en",
         "alma_en": "alma to en", "Delta": delta, "required_directions": required}
    for system, to_en, to_x in (("ref", 0.9, 0.5), ("gpt4", 0.8, 0.95), ("alma", 0.7, 0.2)):
        for scorer in ("kiwi_xcomet", "kiwi", "xcomet"):
            t[f"{system}_en_{scorer}"] = to_en
            t[f"{system}_{lang}_{scorer}"] = to_x
    return {"translation": t}


def test_alma_r_hub_layout_through_a_mirror(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xllama.alma.cpo import read_preferences

    folder = tmp_path / "mirror/haoranxu/ALMA-R-Preference/de-en/train"
    folder.mkdir(parents=True)
    rows = [alma_r_row(), alma_r_row(delta=-1.0), alma_r_row(required="en-de")]
    rows[1]["translation"]["de"] = "Zweite Quelle"
    rows[2]["translation"]["de"] = "Dritte Quelle"
    pq.write_table(pa.Table.from_pylist(rows), folder / "0000.parquet")
    monkeypatch.setenv("XLLAMA_HUB_MIRROR", str(tmp_path / "mirror"))
    triplets, provenance = read_preferences("hf:haoranxu/ALMA-R-Preference:de-en")
    got = [(t.src, t.tgt, t.source, t.preferred, t.dispreferred) for t in triplets]
    assert got == [
        ("de", "en", "Quelle de", "the reference", "alma to en"),       # scores: ref .9 > gpt4 .8 > alma .7
        ("en", "de", "the reference", "gpt4 nach de", "alma nach de"),  # gpt4 .95 > ref .5 > alma .2
        ("de", "en", "Zweite Quelle", "alma to en", "gpt4 to en"),      # Delta < 0: the human preferred ALMA
        ("en", "de", "the reference", "alma nach de", "gpt4 nach de"),
        ("en", "de", "the reference", "gpt4 nach de", "alma nach de"),  # required_directions: en-de only
    ]
    assert provenance["records"] == 3 and provenance["triplets"] == 5


def test_recipe_data_guard_and_manifest(pairs, tmp_path):
    from xllama.alma.cpo import load_preferences, parse_spec

    records = synthetic_triplets(pairs, 6)
    guard = tmp_path / "eval.txt"
    guard.write_text(records[2]["source"] + "\n", encoding="utf-8")
    candidates = {"direction": "en-de", "source": "A sentence to translate here.",
                  "candidates": [{"text": "gut", "score": 0.9}, {"text": "schlecht", "score": 0.1},
                                 {"text": "mittel", "score": 0.5}]}
    write_jsonl(tmp_path / "t.jsonl", records + [records[0], candidates])
    spec = parse_spec({"preference": str(tmp_path / "t.jsonl"), "guard": [str(guard)]})
    dataset, manifest = load_preferences(spec)
    assert manifest["removed"] == {"direction": 0, "duplicates": 1, "contamination": 1}
    assert manifest["by_direction"] == {"de-en": 5, "en-de": 1} and len(dataset) == 6
    row = dataset.filter(lambda r: r["src"] == "en")[0]
    assert (row["preferred"], row["dispreferred"]) == ("gut", "schlecht")
    spec = parse_spec({"preference": str(tmp_path / "t.jsonl"), "directions": "en-x"})
    assert len(load_preferences(spec)[0]) == 1


@pytest.mark.parametrize("record, message", [
    ({"direction": "de-en", "source": "x", "dispreferred": "b"}, "missing field 'preferred'"),
    ({"direction": "de-en", "source": "x", "candidates": []}, "at least two candidates, got 0"),
    ({"direction": "de-en", "source": "x", "preferred": "Same  text", "dispreferred": "Same text"},
     "are the same text"),
    ({"direction": "de-xx", "source": "x", "preferred": "a", "dispreferred": "b"}, "field 'direction'"),
    ({"direction": "de-en", "source": "x", "candidates": [{"text": "a", "score": 1}, {"text": "b"}]},
     "candidate 2: field 'score'"),
])
def test_bad_preference_records_name_file_and_line(record, message, tmp_path):
    from xllama.alma.cpo import read_preferences

    path = write_jsonl(tmp_path / "bad.jsonl", [{"direction": "de-en", "source": "s", "preferred": "a",
                                                 "dispreferred": "b"}, record])
    with pytest.raises(XllamaError) as e:
        read_preferences(str(path))
    assert f"{path}: line 2" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("data, message", [
    ({}, "preference: no preference data"),
    ({"preference": "x.jsonl", "scorer": "bleu"}, "scorer: 'bleu' is not one of"),
    ({"preference": "x.jsonl", "parallel": {}}, "parallel: unknown key for task alma-cpo"),
])
def test_recipe_errors(data, message):
    from xllama.alma.cpo import parse_spec

    with pytest.raises(XllamaError, match=message):
        parse_spec(data)


def test_micro_batch_must_hold_a_triplet(tokenizer):
    from xllama.alma.cpo import tokenize
    from xllama.train.config import Recipe, TrainConfig

    recipe = Recipe(task="alma-cpo", train=TrainConfig(max_length=128, micro_batch_tokens=200))
    with pytest.raises(XllamaError, match="at least 2 x train.max_length"):
        tokenize(None, tokenizer, recipe, writer=None)


def test_candidate_scorers_comet_and_the_chrf_fallback(tmp_path, monkeypatch):
    """COMET when a checkpoint resolves (a tiny one built here; segment scores = unbabel-comet's x 100), chrF++
    (sacreBLEU sentence scores) when none does, each with its signature."""
    from sacrebleu.metrics import CHRF

    from xllama.alma.preference import SegmentScorer
    from xllama.eval import metrics as M

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    srcs, refs = ["Guten Morgen.", "Wie geht es dir?"], ["Good morning.", "How are you?"]
    hyps = ["Good morning.", "How is it going to you?"]
    fallback = SegmentScorer("auto")  # the default checkpoint is not reachable offline
    scores = fallback.score(srcs, hyps, refs)
    assert fallback.name == "chrf" and scores[0] == pytest.approx(100.0) and scores[1] < 100
    assert scores[1] == pytest.approx(CHRF(word_order=2).sentence_score(hyps[1], [refs[1]]).score)
    assert "nc:6|nw:2" in fallback.signature and fallback.signature.endswith("|segment")

    pytest.importorskip("comet")
    from test_eval_comet import build_tiny_comet

    checkpoint = build_tiny_comet(tmp_path / "comet")
    scorer = SegmentScorer("auto", str(checkpoint), progress=False)
    assert scorer.name == "comet" and scorer.signature.startswith(f"model:{checkpoint}|comet:")
    expected = M.comet(hyps, refs, srcs, str(checkpoint), progress=False)[2]
    assert scorer.score(srcs, hyps, refs) == pytest.approx([100 * x for x in expected], abs=1e-4)
    with pytest.raises(XllamaError, match="could not get COMET model"):
        SegmentScorer("comet", "Unbabel/wmt22-comet-da")  # asked for explicitly: no silent fallback


@pytest.mark.parametrize("argv, message", [
    (["--pairs", "de-en"], "bad --pairs 'de-en': expected SRC-TGT=LOCATION"),
    (["--pairs", "de-en=x", "--beams", "0"], "--beams '0': expected comma-separated beam counts >= 1"),
    (["--pairs", "de-en=/nonexistent/pairs"], "/nonexistent/pairs"),
])
def test_preference_command_errors(argv, message, tmp_path, capsys):
    from xllama.cli import main

    rc = main(["data", "preference", "--model", "m", "--metric", "chrf", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("xllama data preference: error:") and message in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- stage 3


@pytest.mark.slow
def test_stage3_end_to_end_preference_cpo_translate(shared, base_model, tmp_path):
    """stage-2 model -> `xllama data preference` (chrF++, reference + greedy + beam candidates) ->
    `xllama train --recipe alma-r-quickstart` (LoRA CPO) -> `xllama translate`."""
    from xllama.cli import main

    out = tmp_path / "triplets"
    rc = main(["data", "preference", "--model", str(base_model), "--pairs", f"de-en={shared / PAIRS / 'deen'}",
               "--size", "12", "--beams", "1,2", "--metric", "chrf", "--max-new-tokens", "8", "--quiet",
               "--out", str(out)])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metric"]["name"] == "chrf" and manifest["metric"]["signature"].startswith("nrefs:1")
    records = [json.loads(x) for x in (out / "triplets.jsonl").read_text().splitlines()]
    assert len(records) == manifest["triplets"] > 0
    for r in records:
        assert len(r["candidates"]) == 3 and r["preferred_score"] >= r["dispreferred_score"]
        assert r["preferred"] != r["dispreferred"]
    assert manifest["preferred_by_system"] == {"reference": len(records)}  # chrF++ of the reference is 100

    run = tmp_path / "alma-r"
    rc = main(["train", "--recipe", "alma-r-quickstart", "--model", str(base_model), "--out", str(run),
               "--set", f"data.preference={out}", "--set", "train.max_length=256",
               "--set", "train.micro_batch_tokens=1024", "--set", "lora.target_modules=[down_proj]"])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    rc = main(["translate", "--model", str(run / "final"), "--src", "de", "--tgt", "en", "--max-new-tokens", "4",
               "Guten Morgen"])
    assert rc == 0
