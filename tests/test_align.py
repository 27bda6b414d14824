"""xllama align: pooling over real tokens only, the per-layer metrics, the CLI's outputs and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from xllama.align import alignment_metrics, encode_sentences, layer_metrics, model_labels, pool_layers
from xllama.cli import main
from xllama.modeling import build_bpe_tokenizer, build_model_from_config

ENGLISH = [
    "The cat sleeps on the warm windowsill.",
    "We took the early train to the city.",
    "Scientists discovered a new species of frog in the rainforest.",
    "My grandmother bakes bread every Sunday morning.",
    "The museum opens at nine and closes at five.",
    "He forgot his umbrella, so he got wet.",
    "Children were playing football in the park.",
    "The river flooded the village after heavy rain.",
]
GERMAN = [
    "Die Katze schläft auf der warmen Fensterbank.",
    "Wir nahmen den frühen Zug in die Stadt.",
    "Wissenschaftler entdeckten eine neue Froschart im Regenwald.",
    "Meine Großmutter backt jeden Sonntagmorgen Brot.",
    "Das Museum öffnet um neun und schließt um fünf.",
    "Er vergaß seinen Regenschirm und wurde nass.",
    "Kinder spielten im Park Fußball.",
    "Der Fluss überflutete das Dorf nach starkem Regen.",
]
CHINESE = [
    "猫睡在温暖的窗台上。",
    "我们坐早班火车进城。",
    "科学家在雨林中发现了一种新的青蛙。",
    "我的祖母每个星期天早上烤面包。",
]
TINY_LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def tokenizer():
    """A real byte-level BPE tokenizer trained on the test sentences (no download)."""
    return build_bpe_tokenizer((ENGLISH + GERMAN + CHINESE) * 3, vocab_size=400)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model_from_config(TINY_LLAMA, vocab_size=len(tokenizer)).eval()


def test_identical_sentences_give_similarity_one_and_perfect_retrieval(model, tokenizer):
    # encoded twice with different batchings, so the two sides really go through the model separately
    source = encode_sentences(model, tokenizer, ENGLISH, batch_size=3)
    target = encode_sentences(model, tokenizer, ENGLISH, batch_size=8)
    for center in (False, True):
        layers = alignment_metrics(source.vectors, target.vectors, center=center)
        assert [row["layer"] for row in layers] == [0, 1, 2]  # embeddings + 2 blocks
        for row in layers:
            assert row["pair_cosine"] == pytest.approx(1.0, abs=1e-5)
            assert row["retrieval_src_to_tgt"] == 1.0 and row["retrieval_tgt_to_src"] == 1.0
            assert row["margin"] == pytest.approx(1.0 - row["mismatch_cosine"], abs=1e-6)
            assert row["margin"] > 0


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padding_does_not_change_a_sentence_vector(model, tokenizer, padding_side):
    short = "The cat sleeps."
    long = " ".join(ENGLISH + GERMAN)
    assert len(tokenizer(long)["input_ids"]) > 5 * len(tokenizer(short)["input_ids"])
    alone = encode_sentences(model, tokenizer, [short], padding_side=padding_side).vectors[:, 0]
    batched = encode_sentences(model, tokenizer, [long, short], batch_size=2, padding_side=padding_side).vectors[:, 1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pool_tokens, first", [("text", 1), ("all", 0)])
def test_pooled_vector_is_the_mean_of_the_chosen_positions(model, tokenizer, pool_tokens, first):
    sentence = ENGLISH[2]
    ids = torch.tensor([tokenizer(sentence)["input_ids"]])
    with torch.inference_mode():
        states = model.model(input_ids=ids, output_hidden_states=True).hidden_states
    expected = torch.stack([layer[0, first:].mean(dim=0) for layer in states])
    pooled = encode_sentences(model, tokenizer, [sentence, ENGLISH[0]], batch_size=2, pool_tokens=pool_tokens)
    got = pooled.vectors[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_pool_layers_averages_real_tokens_only():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [float("nan"), 1e9]]])  # 1 sentence, 3 positions, h=2
    mask = torch.tensor([[1, 1, 0]])
    pooled = pool_layers([hidden, 2 * hidden], mask)
    torch.testing.assert_close(pooled, torch.tensor([[[2.0, 3.0]], [[4.0, 6.0]]]))


def test_layer_metrics_on_known_geometry():
    n = 5
    one_hot = torch.eye(n)
    aligned = layer_metrics(one_hot, one_hot.clone())
    assert aligned == pytest.approx({"pair_cosine": 1.0, "mismatch_cosine": 0.0, "margin": 1.0,
                                     "retrieval_src_to_tgt": 1.0, "retrieval_tgt_to_src": 1.0})
    shifted = layer_metrics(one_hot, one_hot.roll(1, dims=0))  # every sentence paired with a wrong one
    assert shifted["pair_cosine"] == pytest.approx(0.0)
    assert shifted["mismatch_cosine"] == pytest.approx(1 / (n - 1))
    assert shifted["retrieval_src_to_tgt"] == 0.0 and shifted["retrieval_tgt_to_src"] == 0.0


def test_metrics_on_tiny_llama_match_a_full_similarity_matrix(model, tokenizer):
    source = encode_sentences(model, tokenizer, ENGLISH, batch_size=4).vectors
    target = encode_sentences(model, tokenizer, GERMAN, batch_size=4).vectors
    for layer in range(source.shape[0]):
        got = layer_metrics(source[layer], target[layer], chunk_size=3)  # chunks of rows, as for big files
        a = torch.nn.functional.normalize(source[layer].double(), dim=-1)
        b = torch.nn.functional.normalize(target[layer].double(), dim=-1)
        sims = a @ b.T
        n = len(ENGLISH)
        off = ~torch.eye(n, dtype=torch.bool)
        expected = {
            "pair_cosine": sims.diagonal().mean().item(),
            "mismatch_cosine": sims[off].mean().item(),
            "retrieval_src_to_tgt": (sims.argmax(1) == torch.arange(n)).double().mean().item(),
            "retrieval_tgt_to_src": (sims.argmax(0) == torch.arange(n)).double().mean().item(),
        }
        expected["margin"] = expected["pair_cosine"] - expected["mismatch_cosine"]
        assert got == pytest.approx(expected, abs=1e-5)
        assert -1 <= got["mismatch_cosine"] <= 1


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_cli_writes_json_and_png_for_two_models(model, tokenizer, tmp_path):
    checkpoint = tmp_path / "tiny"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    src, tgt = _write(tmp_path / "a.en", ENGLISH), _write(tmp_path / "a.de", GERMAN)
    out = tmp_path / "out"
    code = main(["align", "--model", str(checkpoint), "--model", str(checkpoint), "--src-file", str(src),
                 "--tgt-file", str(tgt), "--pairs", "en-de", "--batch-size", "3", "--limit", "6", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "alignment.json").read_text(encoding="utf-8"))
    assert [m["label"] for m in report["models"]] == ["tiny", "tiny#2"]
    pair = report["models"][0]["pairs"]["en-de"]
    assert pair["sentences"] == 6 and len(pair["layers"]) == 3
    # the same model twice gives the same numbers
    for again, first in zip(report["models"][1]["pairs"]["en-de"]["layers"], pair["layers"]):
        assert again == pytest.approx(first)
    assert (out / "alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pairs", "en-xx"], "unknown language code 'xx'"),
        (["--pairs", "en-en"], "same language"),
        (["--src-file", "{a}", "--tgt-file", "{short}"], "differ in length"),
        (["--src-file", "{a}", "--tgt-file", "{blank}"], "line 2 is empty"),
        (["--src-file", "{a}"], "go together"),
        (["--src-file", "{a}", "--tgt-file", "{a}", "--pairs", "en-de,en-zh"], "one language pair"),
        (["--limit", "1"], "at least 2"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, extra, message):
    files = {"a": _write(tmp_path / "a.txt", ENGLISH[:3]), "short": _write(tmp_path / "b.txt", GERMAN[:2]),
             "blank": _write(tmp_path / "c.txt", [GERMAN[0], "", GERMAN[2]])}
    extra = [arg.format(**files) for arg in extra]
    code = main(["align", "--model", str(tmp_path / "missing.gguf"), *extra, "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "xllama align: error:" in err and message in err
    assert not (tmp_path / "out").exists()


def test_model_labels():
    assert model_labels(["a/b/model.gguf", "org/name"], None) == ["model", "org/name"]
    assert model_labels(["x", "y"], ["base", "base"]) == ["base", "base#2"]


@pytest.mark.slow
def test_smollm2_on_flores_through_the_cli(smollm_gguf, shared, tmp_path):
    out = tmp_path / "align"
    code = main(["align", "--model", str(smollm_gguf), "--pairs", "en-zh", "--data",
                 str(shared / "data" / "eval" / "flores101" / "devtest"), "--limit", "16", "--batch-size", "8",
                 "--out", str(out)])
    assert code == 0
    report = json.loads((out / "alignment.json").read_text(encoding="utf-8"))
    assert report["data"]["pairs"]["en-zh"]["sentences"] == 16
    (entry,) = report["models"]
    assert entry["num_layers"] == 30 and entry["hidden_size"] == 576
    layers = entry["pairs"]["en-zh"]["layers"]
    assert [row["layer"] for row in layers] == list(range(31))
    assert len(entry["pairs"]["en-zh"]["layers_centered"]) == 31
    for row in layers + entry["pairs"]["en-zh"]["layers_centered"]:
        assert set(row) == {"layer", "pair_cosine", "mismatch_cosine", "margin", "retrieval_src_to_tgt",
                            "retrieval_tgt_to_src"}
        assert -1 <= row["mismatch_cosine"] <= row["pair_cosine"] + 1
        assert 0 <= row["retrieval_src_to_tgt"] <= 1
    png = (out / "alignment.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
