"""The COMET family by metric name (comet, cometkiwi reference-free, xcomet) on tiny checkpoints these tests
build with unbabel-comet's own classes (the layout of tests/test_eval_comet.py); each loaded once and reused."""

from __future__ import annotations

import pytest

from xllama.eval import metrics as M

pytest.importorskip("comet", reason="unbabel-comet not installed (pip install 'xllama[comet]')")

from test_eval_comet import HYPS, REFS, SRCS, build_tiny_comet  # noqa: E402


def save_comet(model, folder):
    import torch
    import yaml

    hparams = dict(model.hparams)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": "2.0.0"}, folder / "checkpoints" / "model.ckpt")
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """{metric: checkpoint folder}: a RegressionMetric (wmt22-comet-da's class), a UnifiedMetric on (mt, src)
    only (CometKiwi's class and inputs) and an XCOMETMetric, all on one 2-layer XLM-R encoder."""
    import torch
    from comet.models import UnifiedMetric, XCOMETMetric

    root = tmp_path_factory.mktemp("comet-family")
    comet = build_tiny_comet(root / "comet") if (root / "comet").mkdir() is None else None
    encoder = str(comet / "encoder")
    common = dict(pretrained_model=encoder, encoder_model="XLM-RoBERTa", load_pretrained_weights=False,
                  local_files_only=True, hidden_sizes=[16], layer_transformation="softmax", nr_frozen_epochs=0,
                  word_layer=2)
    torch.manual_seed(1)
    kiwi = save_comet(UnifiedMetric(input_segments=["mt", "src"], **common), root / "kiwi")
    torch.manual_seed(2)
    xcomet = save_comet(XCOMETMetric(**common), root / "xcomet")
    return {"comet": comet, "cometkiwi": kiwi, "xcomet": xcomet}


def own_scores(folder, samples):
    from comet import load_from_checkpoint

    model = load_from_checkpoint(str(folder / "checkpoints" / "model.ckpt"))
    return model.predict(samples, batch_size=2, gpus=0, progress_bar=False).system_score


def test_the_family_by_name_equals_unbabel_comet(family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    M._load_comet.cache_clear()
    options = dict(comet_model=str(family["comet"]), cometkiwi_model=str(family["cometkiwi"]),
                   xcomet_model=str(family["xcomet"]), comet_batch_size=2, gpus=0, progress=False)
    out = M.score_translation(HYPS, REFS, "zh", srcs=SRCS, metrics="comet,cometkiwi,xcomet", **options)
    triples = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(SRCS, HYPS, REFS)]
    pairs = [{"src": s, "mt": h} for s, h in zip(SRCS, HYPS)]
    assert out["comet"] == pytest.approx(100 * own_scores(family["comet"], triples), abs=1e-4)
    assert out["xcomet"] == pytest.approx(100 * own_scores(family["xcomet"], triples), abs=1e-4)
    assert out["cometkiwi"] == pytest.approx(100 * own_scores(family["cometkiwi"], pairs), abs=1e-4)
    assert out["signature"]["cometkiwi"].endswith("|ref:none")
    assert "ref:none" not in out["signature"]["comet"] + out["signature"]["xcomet"]
    assert len({round(out[m], 4) for m in ("comet", "cometkiwi", "xcomet")}) == 3  # three different models

    # reference-free: other references change XCOMET but not CometKiwi; a second direction loads nothing
    loads = M._load_comet.cache_info().misses
    other = M.score_translation(HYPS, REFS[::-1], "zh", srcs=SRCS, metrics="cometkiwi,xcomet", **options)
    assert other["cometkiwi"] == pytest.approx(out["cometkiwi"], abs=1e-6)
    assert other["xcomet"] != pytest.approx(out["xcomet"], abs=1e-6)
    assert M._load_comet.cache_info().misses == loads == 3
    _, _, segments = M.comet(HYPS, None, SRCS, str(family["cometkiwi"]), batch_size=2, gpus=0, progress=False)
    assert len(segments) == len(HYPS)
