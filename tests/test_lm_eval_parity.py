"""xllama's lm-eval prompt style and lm-eval metrics equal lm-evaluation-harness's own (installed from the dev
extra): the prompts its task YAMLs render, and its process_results functions on the same predictions."""

from __future__ import annotations

from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from xllama.eval.qa_metrics import LM_EVAL_MLQA_LANGS, lm_eval_task, score_lm_eval_qa  # noqa: E402
from xllama.prompts import LM_EVAL_QA_LABELS, lm_eval_qa_prompt  # noqa: E402

TASKS = Path(lm_eval.__file__).parent / "tasks"

# (prediction, gold answers): exact and partial answers, articles, punctuation, casing, empty and
# punctuation-only answers, answers that are not the first gold, leading/trailing spaces.
CASES = {
    "en": [("the Eiffel Tower", ["Eiffel Tower"]), ("Paris, France.", ["Paris"]), ("", ["1889"]),
           (" 1889 ", ["in 1889", "1889"]), ("...", ["."]), ("", ["The"]), ("a dog and the cat", ["dog"]),
           ("Gustave Eiffel's company", ["Gustave Eiffel", "Eiffel's company"]), ("no", ["yes", "no"])],
    "zh": [("北京大学", ["北京"]), ("北京。", ["北京"]), ("在 2008 年", ["2008年"]), ("", ["北京"]),
           ("清华大学和北京大学", ["北京大学", "清华"]), ("Beijing 大学", ["北京大学"])],
    "de": [("der Hund", ["Hund"]), ("Die Katze!", ["die Katze"]), ("einem Haus", ["Haus", "ein Haus"])],
    "es": [("el perro", ["perro"]), ("Las casas", ["casas"])],
    "ar": [("الكتاب", ["كتاب"]), ("في البيت", ["البيت"]), ("المدرسة الكبيرة", ["مدرسة"])],
    "vi": [("của tôi", ["tôi"]), ("Hà Nội", ["hà nội."])],
    "hi": [("दिल्ली।", ["दिल्ली"]), ("नई दिल्ली", ["दिल्ली"])],
}


def lm_eval_means(results):
    return {k: 100.0 * sum(r[k] for r in results) / len(results) for k in ("exact_match", "f1")}


@pytest.mark.parametrize("lang", sorted(CASES))
def test_xquad_metrics_equal_lm_eval(lang):
    from lm_eval.tasks.xquad.utils import process_results_qa

    predictions, answers = zip(*CASES[lang])
    theirs = lm_eval_means([process_results_qa({"answers": {"text": list(golds)}}, [prediction])
                            for prediction, golds in CASES[lang]])
    ours = score_lm_eval_qa(predictions, answers, f"xquad_{lang}")
    assert ours == pytest.approx(theirs, abs=1e-9)


@pytest.mark.parametrize("lang", LM_EVAL_MLQA_LANGS)
def test_mlqa_metrics_equal_lm_eval(lang):
    from lm_eval.tasks.mlqa.utils import process_results_lang

    cases = CASES[lang] + CASES["en"][:3]
    predictions, answers = zip(*cases)
    theirs = lm_eval_means([process_results_lang({"answers": list(golds)}, [prediction], lang)
                            for prediction, golds in cases])
    ours = score_lm_eval_qa(predictions, answers, f"mlqa_{lang}_{lang}")
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_the_cases_tell_the_metrics_apart():
    """The cases are not trivial: lm-eval's xquad (first gold only) and mlqa scores differ from each other."""
    predictions, answers = zip(*CASES["en"])
    assert score_lm_eval_qa(predictions, answers, "xquad_en") != score_lm_eval_qa(predictions, answers, "mlqa_en_en")


def render(yaml_file: Path, context: str, question: str) -> str:
    import jinja2
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: None)
    config = {}
    for part in (yaml_file.parent / "xquad_common_yaml", yaml_file.parent / "mlqa_common_yaml", yaml_file):
        if part.is_file() and (part == yaml_file or part.name.startswith(yaml_file.name.split("_")[0])):
            config.update(yaml.load(part.read_text(encoding="utf-8"), Loader=Loader))
    return jinja2.Template(config["doc_to_text"]).render(context=context, question=question)


@pytest.mark.parametrize("lang", sorted(LM_EVAL_QA_LABELS))
def test_prompts_equal_lm_eval_task_yamls(lang):
    context, question = "  Ein Kontext {mit} Klammern.\n", "Was?"
    assert lm_eval_qa_prompt(context, question, lang) == render(TASKS / "xquad" / f"xquad_{lang}.yaml", context,
                                                                question)
    if lang in LM_EVAL_MLQA_LANGS:
        assert lm_eval_qa_prompt(context, question, lang, "mlqa") == render(
            TASKS / "mlqa" / f"mlqa_{lang}_{lang}.yaml", context, question)


def test_task_names_and_errors():
    from xllama.errors import XllamaError

    assert lm_eval_task("xquad", "zh") == "xquad_zh"
    assert lm_eval_task("../shared/data/eval/mlqa", "de") == "mlqa_de_de"
    with pytest.raises(XllamaError, match="no mlqa_ja_ja task"):
        score_lm_eval_qa(["x"], [["x"]], "mlqa_ja_ja")
    with pytest.raises(XllamaError, match="no xquad_ja task"):
        lm_eval_qa_prompt("c", "q", "ja")


def test_qa_with_the_lm_eval_prompt_scores_like_lm_eval(tmp_path, shared):
    """`xllama eval qa --prompt lm-eval` on a tiny random model: lm-eval's prompt, its answer extraction (the
    greedy continuation cut at the first newline), and its metric functions' scores on those answers."""
    import json

    torch = pytest.importorskip("torch")
    from lm_eval.tasks.xquad.utils import process_results_qa

    from xllama.cli import main
    from xllama.data.evalsets import load_squad
    from xllama.eval.results import read_results
    from xllama.modeling import build_bpe_tokenizer, build_model_from_config

    xquad = shared / "data" / "eval" / "xquad"
    examples = load_squad(str(xquad), "zh")[:4]
    tokenizer = build_bpe_tokenizer([ex.context for ex in load_squad(str(xquad), "zh")[:200]], vocab_size=600)
    torch.manual_seed(0)
    model = build_model_from_config({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "num_key_value_heads": 2}, vocab_size=len(tokenizer))
    with torch.no_grad():  # newlines likely, also as the first token: lm-eval's answer is then empty
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("Ċ")] *= 3.0
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")

    out = tmp_path / "run"
    assert main(["eval", "qa", "--model", str(tmp_path / "m"), "--data", str(xquad), "--lang", "zh", "--prompt",
                 "lm-eval", "--limit", "4", "--batch-size", "1", "--max-new-tokens", "8", "--out", str(out),
                 "--no-progress"]) == 0
    [path] = out.glob("results_qa_*lm-eval*.json")
    results = read_results(path)
    assert results.prompt == "lm-eval" and results.decoding["stop"] == "eos+newline"
    assert results.extra["prompt_template"] == render(TASKS / "xquad" / "xquad_zh.yaml", "{context}", "{question}")
    predictions = [json.loads(line)["prediction"] for line in (out / results.extra["outputs"]["zh"]).open()]

    expected = []  # lm-eval's extraction: greedy continuation, split at "\n", no skipping of a leading newline
    for ex in examples:
        ids = tokenizer(render(TASKS / "xquad" / "xquad_zh.yaml", ex.context, ex.question), return_tensors="pt")
        with torch.no_grad():
            full = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(full[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        expected.append(text.split("\n")[0].strip())
    assert predictions == expected

    theirs = lm_eval_means([process_results_qa({"answers": {"text": ex.answers}}, [p])
                            for ex, p in zip(examples, predictions)])
    scores = results.scores["zh"]
    assert {k: scores[k] for k in ("exact_match", "f1")} == pytest.approx(theirs, abs=1e-9)
    assert results.signatures["zh"]["f1"].startswith("lm-eval:xquad_zh|") and "prompt:lm-eval" in \
        results.signatures["zh"]["f1"]
