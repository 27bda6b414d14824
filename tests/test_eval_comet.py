"""COMET through unbabel-comet, on a tiny checkpoint this test builds (no real weights are reachable offline).

The checkpoint has the layout unbabel-comet loads with ``comet.load_from_checkpoint``: ``hparams.yaml`` (the
``class_identifier``, ``pretrained_model`` pointing at a local encoder folder, ``load_pretrained_weights``
false) beside ``checkpoints/model.ckpt`` (a Lightning checkpoint: ``state_dict`` + ``hyper_parameters``).
The encoder folder holds an XLM-R config of 2 tiny layers and a BPE tokenizer trained here.
"""

from __future__ import annotations

import json

import pytest

from xllama.errors import XllamaError
from xllama.eval import metrics as M

SRCS = ["The cat sits on the mat.", "It is raining today.", "I like green tea.", "Where is the station?"]
REFS = ["猫坐在垫子上。", "今天下雨。", "我喜欢绿茶。", "车站在哪里？"]
HYPS = ["猫在垫子上。", "今天天气很好。", "I like green tea.", ""]


def build_tiny_comet(folder):
    import torch
    import yaml
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    from comet.models import RegressionMetric

    encoder = folder / "encoder"
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(SRCS + REFS + HYPS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                                    show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[(s, tok.token_to_id(s)) for s in ("<s>", "</s>")])
    XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                            cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                            model_max_length=128).save_pretrained(encoder)
    XLMRobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                     eos_token_id=2).save_pretrained(encoder)
    torch.manual_seed(0)
    model = RegressionMetric(pretrained_model=str(encoder), load_pretrained_weights=False, local_files_only=True,
                             hidden_sizes=[16], layer_transformation="softmax", nr_frozen_epochs=0)
    hparams = dict(model.hparams)
    (folder / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    (folder / "checkpoints").mkdir()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": "2.0.0"}, folder / "checkpoints" / "model.ckpt")
    return folder


@pytest.fixture(scope="module")
def tiny_comet(tmp_path_factory):
    pytest.importorskip("comet", reason="unbabel-comet not installed (pip install 'xllama[comet]')")
    return build_tiny_comet(tmp_path_factory.mktemp("tiny-comet"))


def test_comet_through_score_translation(tiny_comet, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = M.score_translation(HYPS, REFS, "zh", srcs=SRCS, metrics="comet,bleu", comet_model=str(tiny_comet),
                              comet_batch_size=2, gpus=0, progress=False)
    assert out["signature"]["comet"].startswith(f"model:{tiny_comet}|comet:")
    assert "scale:100" in out["signature"]["comet"]

    # the same numbers as unbabel-comet's own API on the same checkpoint
    from comet import load_from_checkpoint

    reference = load_from_checkpoint(str(tiny_comet / "checkpoints" / "model.ckpt"))
    expected = reference.predict([{"src": s, "mt": h, "ref": r} for s, h, r in zip(SRCS, HYPS, REFS)],
                                 batch_size=2, gpus=0, progress_bar=False)
    assert out["comet"] == pytest.approx(100 * expected.system_score, abs=1e-4)
    _, _, segments = M.comet(HYPS, REFS, SRCS, str(tiny_comet), batch_size=4, gpus=0, progress=False)
    assert segments == pytest.approx(expected.scores, abs=1e-5)
    assert len(set(round(s, 6) for s in segments)) > 1  # not a constant model: it reads its inputs


def test_comet_checkpoint_file_and_errors(tiny_comet, tmp_path):
    ckpt = tiny_comet / "checkpoints" / "model.ckpt"
    assert M.resolve_comet_checkpoint(str(ckpt)) == ckpt
    assert M.resolve_comet_checkpoint(str(tiny_comet)) == ckpt
    with pytest.raises(XllamaError, match="give the sources"):
        M.comet(HYPS, REFS, None, str(tiny_comet), gpus=0, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(XllamaError, match="no checkpoints/model.ckpt"):
        M.resolve_comet_checkpoint(str(tmp_path / "empty"))


def test_comet_hub_model_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(XllamaError, match="huggingface-cli download Unbabel/wmt22-comet-da"):
        M.resolve_comet_checkpoint(M.DEFAULT_COMET_MODEL)


def test_comet_through_cli(tiny_comet, tmp_path, capsys, monkeypatch):
    from xllama.cli import main as cli_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, lines in (("src.en", SRCS), ("hyp.zh", HYPS), ("ref.zh", REFS)):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc = cli_main(["eval", "score", "--hyp", str(tmp_path / "hyp.zh"), "--ref", str(tmp_path / "ref.zh"), "--src",
                     str(tmp_path / "src.en"), "--tgt", "zh", "--metrics", "comet", "--comet-model",
                     str(tiny_comet), "--gpus", "0", "--out", str(tmp_path / "out.json")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 4 and isinstance(printed["comet"], float)
    assert json.loads((tmp_path / "out.json").read_text()) == printed


def test_bleurt_without_the_port_says_how_to_install():
    pytest.importorskip("torch")
    try:
        import bleurt_pytorch  # noqa: F401

        pytest.skip("bleurt-pytorch is installed")
    except ImportError:
        pass
    with pytest.raises(XllamaError, match="pip install"):
        M.score_translation(HYPS, REFS, "zh", metrics="bleurt")
