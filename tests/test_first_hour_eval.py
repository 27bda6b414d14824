"""Issue 17, evaluation side: result names that never collide (two `final` folders, --limit vs full runs),
refusal rather than silent overwrite, `eval report` over runs/eval/*, progress inside a batch, one default
prompt for `translate` and `eval translation`, characters for unsegmented scripts in `data stats`, and the
human table of `scaling allocate`."""

from __future__ import annotations

import io
import json

import pytest

torch = pytest.importorskip("torch")

from xllama.cli import main  # noqa: E402
from xllama.eval.results import (default_run_dir, model_slug, read_results, result_file_name,  # noqa: E402
                                 result_stem)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def two_finals(tmp_path_factory, flores_dir):
    """Two trained-model folders laid out as `xllama train` leaves them: runs/a/final and runs/b/final."""
    from xllama.data.evalsets import load_flores
    from xllama.modeling import build_bpe_tokenizer, build_model_from_config

    text = load_flores(str(flores_dir), "en")[:200] + load_flores(str(flores_dir), "zh")[:200]
    tokenizer = build_bpe_tokenizer(text, vocab_size=600)
    root = tmp_path_factory.mktemp("work")
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        model = build_model_from_config({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                         "num_attention_heads": 2, "num_key_value_heads": 1},
                                        vocab_size=len(tokenizer))
        with torch.no_grad():  # answers that end (newline / EOS) before max_new_tokens
            model.lm_head.weight[tokenizer.convert_tokens_to_ids("Ċ")] *= 3
            model.lm_head.weight[tokenizer.eos_token_id] *= 3
        model.save_pretrained(root / "runs" / name / "final")
        tokenizer.save_pretrained(root / "runs" / name / "final")
    return root


def test_names_tell_models_and_settings_apart(tmp_path):
    (tmp_path / "runs" / "a" / "final").mkdir(parents=True)
    (tmp_path / "runs" / "b" / "final").mkdir(parents=True)
    a, b = default_run_dir(tmp_path / "runs" / "a" / "final"), default_run_dir(tmp_path / "runs" / "b" / "final")
    assert a.parent == b.parent == default_run_dir("x").parent
    assert a.name.startswith("a-final-") and b.name.startswith("b-final-") and a != b
    assert model_slug("/m/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert model_slug("meta-llama/Llama-2-7b-hf") == "Llama-2-7b-hf"
    assert model_slug("runs/x/checkpoint-500") == "x-checkpoint-500"
    # the same folder named two ways is one model
    assert default_run_dir(tmp_path / "runs" / "a" / "final") == default_run_dir(tmp_path / "runs/a/../a/final")
    names = {result_file_name("translation", "flores101", prompt=p, limit=n, num_beams=k)
             for p in ("alpaca", "alma") for n in (None, 20) for k in (1, 5)}
    assert len(names) == 8  # prompt, limit and beams each change the name
    assert result_stem("translation", "../shared/data/eval/flores101/devtest", "alpaca", "devtest", 20) == \
        "translation_flores101-devtest_alpaca_limit20"
    assert result_file_name("qa", "xquad") == "results_qa_xquad.json"  # no limit: the name as before


def test_two_finals_and_limits_never_collide(two_finals, flores_dir, monkeypatch, capsys):
    monkeypatch.chdir(two_finals)
    common = ["--data", str(flores_dir), "--pairs", "en-zh", "--max-new-tokens", "6", "--metrics", "bleu",
              "--no-progress"]
    assert main(["eval", "translation", "--model", "runs/a/final", "--limit", "3", *common]) == 0
    assert main(["eval", "translation", "--model", "runs/b/final", "--limit", "3", *common]) == 0
    assert main(["eval", "translation", "--model", "runs/a/final", "--limit", "2", *common]) == 0
    capsys.readouterr()

    folders = sorted(p.name for p in (two_finals / "runs" / "eval").iterdir())
    assert len(folders) == 2 and folders[0].startswith("a-final-") and folders[1].startswith("b-final-")
    a_files = sorted(p.name for p in (two_finals / "runs" / "eval" / folders[0]).glob("results*.json"))
    assert a_files == ["results_translation_flores101-devtest_alpaca_limit2.json",
                       "results_translation_flores101-devtest_alpaca_limit3.json"]
    limit3 = read_results(two_finals / "runs" / "eval" / folders[0] / a_files[1])
    assert limit3.scores["en-zh"]["n"] == 3 and limit3.extra["limit"] == 3
    assert limit3.extra["model_path"] == str((two_finals / "runs" / "a" / "final").resolve())
    hyps = two_finals / "runs" / "eval" / folders[0] / limit3.extra["outputs"]["en-zh"]
    assert len(hyps.read_text(encoding="utf-8").splitlines()) == 3  # the limit-2 run did not replace them

    # `eval report runs/eval/*` compares the two models, and a's two limits side by side
    assert main(["eval", "report", *(str(p) for p in sorted((two_finals / "runs" / "eval").iterdir()))]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == ("| task | data | pair/lang | metric | runs/a/final (limit 2) | runs/a/final (limit 3) "
                      "| runs/b/final |")


def test_another_run_in_the_same_folder_is_refused(two_finals, flores_dir, tmp_path, capsys):
    a, b = two_finals / "runs" / "a" / "final", two_finals / "runs" / "b" / "final"
    out = tmp_path / "shared-out"
    common = ["--data", str(flores_dir), "--pairs", "en-zh", "--limit", "2", "--metrics", "bleu", "--out", str(out),
              "--no-progress"]
    assert main(["eval", "translation", "--model", str(a), "--max-new-tokens", "6", *common]) == 0
    (results_file,) = out.glob("results_*.json")
    before = results_file.read_bytes()
    capsys.readouterr()

    assert main(["eval", "translation", "--model", str(b), "--max-new-tokens", "6", *common]) == 2
    err = capsys.readouterr().err
    assert "holds results of another run" in err and "model:" in err and "--overwrite" in err
    assert main(["eval", "translation", "--model", str(a), "--max-new-tokens", "5", *common]) == 2
    assert "decoding.max_new_tokens: 6 there, 5 now" in capsys.readouterr().err
    assert results_file.read_bytes() == before  # nothing replaced

    # the same run again adds a direction; --overwrite replaces another run's results
    assert main(["eval", "translation", "--model", str(a), "--max-new-tokens", "6", *common[:2], "--pairs", "zh-en",
                 *common[4:]]) == 0
    assert set(read_results(results_file).scores) == {"en-zh", "zh-en"}
    assert main(["eval", "translation", "--model", str(b), "--max-new-tokens", "6", "--overwrite", *common]) == 0
    replaced = read_results(results_file)
    assert replaced.extra["model_path"] == str(b.resolve()) and set(replaced.scores) == {"en-zh"}


def test_qa_limit_runs_have_their_own_files(two_finals, shared, tmp_path):
    out = tmp_path / "qa"
    for limit in ("2", "3"):
        assert main(["eval", "qa", "--model", str(two_finals / "runs" / "a" / "final"), "--data",
                     str(shared / "data" / "eval" / "xquad"), "--lang", "zh", "--limit", limit, "--max-new-tokens",
                     "4", "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("results*.json")) == ["results_qa_xquad_limit2.json",
                                                                 "results_qa_xquad_limit3.json"]


# ---------------------------------------------------------------------------------------------- progress


def test_batch_progress_counts_sentences_as_they_finish():
    from tqdm import tqdm

    from xllama.eval.generate import BatchProgress

    bar = tqdm(total=3, file=io.StringIO(), mininterval=0)
    monitor = BatchProgress(bar, eos_ids=[0], refresh_s=0)
    monitor.start()
    steps = [[5, 5, 5], [0, 5, 5], [0, 5, 5], [0, 5, 0]]  # row 0 ends at step 2, row 2 at step 4; row 1 runs on
    counts = []
    for k in range(1, len(steps) + 1):
        ids = torch.tensor([[9, *[steps[s][r] for s in range(k)]] for r in range(3)])
        stopped = torch.tensor([False, k == 4, False])  # row 1 completes its first line at step 4
        monitor(ids, stopped)
        counts.append(bar.n)
    assert counts == [0, 1, 1, 3]
    assert monitor.tokens == 3 + 3 + 2 + 2  # rows still running at each step
    monitor.finish(3)
    assert bar.n == 3
    assert "10 tokens generated" in bar.fp.getvalue()


def test_generate_shows_progress_within_a_batch(two_finals, capsys):
    from xllama.eval.generate import generate, load_for_generation

    model, tokenizer = load_for_generation(str(two_finals / "runs" / "a" / "final"), device="cpu")
    prompts = [f"Sentence {i}." for i in range(5)]
    quiet = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=8, progress=False)
    capsys.readouterr()
    shown = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=8, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet  # watching does not change outputs
    assert "tokens generated" in err and "5/5" in err


# ---------------------------------------------------------------------------------------------- defaults


def test_translate_and_eval_translation_share_one_default_prompt(capsys):
    import argparse

    from xllama import translate
    from xllama.eval import cli as eval_cli
    from xllama.prompts import DEFAULT_PROMPT

    parser = argparse.ArgumentParser()
    translate.add_arguments(parser)
    assert parser.parse_args(["--src", "en", "--tgt", "zh", "x"]).prompt == DEFAULT_PROMPT
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    assert parser.parse_args(["translation", "--model", "m", "--pairs", "en-zh"]).prompt == DEFAULT_PROMPT
    for argv in (["translate", "--help"], ["eval", "translation", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert f"(default: {DEFAULT_PROMPT}" in " ".join(capsys.readouterr().out.split())


def test_data_stats_counts_characters_for_unsegmented_scripts():
    from datasets import Dataset

    from xllama.data.mix import mix_stats
    from xllama.languages import length_units

    assert length_units("我爱机器翻译。", "zh") == 7
    assert length_units("I love machine translation.", "en") == 4
    assert length_units("สวัสดี ครับ", "th") == 10  # Thai: characters, spaces not counted
    assert length_units("one two", None) == length_units("one two", "xx") == 2  # unknown: words
    dataset = Dataset.from_dict({
        "instruction": ["i", "i", "i"], "input": ["", "Hello world", "你好世界"],
        "output": ["今天天气很好", "你好世界", "Hello big world"], "source": ["alpaca_zh", "pairs", "pairs"],
        "lang": ["zh", "zh", "zh"], "direction": ["", "en-zh", "zh-en"]})
    stats = mix_stats(dataset)
    assert stats["alpaca_zh"]["output_words"]["mean"] == 6  # characters, not 1 "word"
    assert stats["pairs"]["output_words"]["mean"] == (4 + 3) / 2  # en-zh output in characters, zh-en in words


def test_scaling_allocate_prints_a_table_and_json_on_request(tmp_path, capsys):
    from xllama.io import atomic_write_json
    from xllama.scaling.laws import fit, read_points

    rows = [f"{lang},{x},{s_max - a * (x + 800) ** -0.45:.4f}"
            for lang, s_max, a in (("de", 84, 500), ("zh", 80, 1200)) for x in (500, 1000, 2000, 4000, 8000, 16000)]
    (tmp_path / "points.csv").write_text("lang,size,score\n" + "\n".join(rows) + "\n", encoding="utf-8")
    report = fit(read_points(tmp_path / "points.csv"), form="power", n_bootstrap=0, source="points.csv")
    atomic_write_json(tmp_path / "fit.json", report)
    argv = ["scaling", "allocate", str(tmp_path / "fit.json"), "--budget", "10000", "--cap", "zh=6000"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    lines = table.splitlines()
    assert lines[0].startswith("10,000 pairs, objective sum")
    for lang in ("de", "zh"):
        row = next(line.split() for line in lines if line.startswith(f"{lang} "))
        assert int(row[1].replace(",", "")) == result["allocation"][lang]
        assert float(row[2]) == pytest.approx(result["predicted"][lang], rel=1e-3)
    assert f"gain {result['gain']:+.4g}" in table
