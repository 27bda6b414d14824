"""Evaluate models: translation (FLORES/WMT), QA (XQuAD/MLQA); score existing outputs; compare runs; judge.

  xllama eval translation --model M --data flores101 --pairs en-zh,zh-en [--prompt alpaca|alma] [--limit N]
  xllama eval qa --model M --data xquad --lang zh [--limit N]
  xllama eval score --hyp out.zh --ref ref.zh --tgt zh
  xllama eval report runs/eval/base runs/eval/x-llama
  xllama eval judge ...
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging

from xllama.prompts import DEFAULT_PROMPT, PROMPT_STYLES


logger = logging.getLogger(__name__)

# Sub-commands that live in their own modules: (name, module, help).
EXTERNAL = [
    ("score", "xllama.eval.score", "score existing translations (BLEU, chrF++, COMET, ...) without a model"),
    ("report", "xllama.eval.report", "compare result files side by side as a Markdown table"),
    ("judge", "xllama.eval.judge", "pairwise LLM-as-judge comparison of two models' answers"),
]


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _generation_arguments(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--model", required=True,
                        help="Hub id, local checkpoint folder or .gguf file")
    parser.add_argument("--limit", type=_positive, metavar="N", help="only the first N examples (quick checks)")
    parser.add_argument("--max-new-tokens", type=_positive, default=max_new_tokens,
                        help="longest answer in tokens (default: %(default)s)")
    parser.add_argument("--batch-tokens", type=_positive, metavar="N",
                        help="batch budget: rows x (longest prompt + max new tokens) x beams "
                        "(default: 65536 on GPU, 8192 on CPU)")
    parser.add_argument("--batch-size", type=_positive, metavar="N", help="at most N prompts per batch")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                        help="model weights' dtype (default: bfloat16 on GPU, the checkpoint's on CPU)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--out", metavar="DIR",
                        help="run folder for outputs and results (default: runs/eval/<model>-<hash>, e.g. "
                        "runs/eval/a-final-1f2e3d4c for runs/a/final: one folder per model)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results of a different run (other model or decoding settings) that have "
                        "the same file name in --out; without it such a run is refused")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not reuse or store generated outputs (DIR/cache lets a rerun resume)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="TASK", required=True)

    translation = sub.add_parser("translation", help="translate FLORES/WMT/text files and score them",
                                 description="Translate with a model and score BLEU/chrF++/COMET/off-target.")
    translation.add_argument("--data", default="flores101",
                             help="flores101, flores200, a FLORES folder, a WMT JSON(L) file, or a text-file "
                             "pattern with {lang} (e.g. test.zh-en.{lang}); paths may use {src} {tgt} {xx} "
                             "(default: %(default)s)")
    translation.add_argument("--pairs", required=True, help="directions, e.g. en-zh,zh-en")
    translation.add_argument("--prompt", default=DEFAULT_PROMPT, choices=list(PROMPT_STYLES),
                             help="alpaca: the x-LLM Alpaca instruction that x-LLaMA models are trained on; "
                             "alma: ALMA's prompt, for ALMA-trained models (default: %(default)s, as in "
                             "`xllama translate`)")
    translation.add_argument("--beams", type=_positive, default=1, help="beam size; 1 = greedy (default)")
    translation.add_argument("--split", default="devtest", help="FLORES split (default: %(default)s)")
    translation.add_argument("--metrics", default="bleu,chrf,off_target",
                             help="from bleu, spbleu, chrf, comet, cometkiwi (reference-free), xcomet, bleurt, "
                             "off_target (default: %(default)s)")
    translation.add_argument("--comet-model", help="COMET Hub id or local checkpoint (default: wmt22-comet-da)")
    translation.add_argument("--cometkiwi-model", help="for cometkiwi (default: Unbabel/wmt22-cometkiwi-da)")
    translation.add_argument("--xcomet-model", help="for xcomet (default: Unbabel/XCOMET-XL)")
    translation.add_argument("--spbleu-tokenize", choices=["flores101", "flores200"],
                             help="spBLEU's SentencePiece model (default: flores101)")
    translation.add_argument("--spm-model", help="local copy of the flores SentencePiece model for spBLEU")
    translation.add_argument("--bleu-tokenize", help="override BLEU's tokenizer (default: the target's)")
    _generation_arguments(translation, max_new_tokens=256)
    translation.set_defaults(_eval_run=run_translation)

    qa = sub.add_parser("qa", help="zero-shot extractive QA on XQuAD/MLQA",
                        description="Answer XQuAD/MLQA questions zero-shot; SQuAD, MLQA and x-LLM metrics.")
    qa.add_argument("--data", default="xquad",
                    help="xquad, mlqa, a SQuAD v1.1 JSON file, or a folder of <name>.<lang>.json (default: xquad)")
    qa.add_argument("--lang", required=True, help="language(s), e.g. zh or ar,zh")
    qa.add_argument("--prompt", default="alpaca", choices=["alpaca", "lm-eval"],
                    help="x-LLM's Alpaca prompt, or lm-evaluation-harness's xquad_<lang> / mlqa_<lang>_<lang> "
                    "prompt and newline stop; lm-eval's exact_match and f1 are reported either way "
                    "(default: %(default)s)")
    _generation_arguments(qa, max_new_tokens=64)
    qa.set_defaults(_eval_run=run_qa)

    for name, module_name, help_text in EXTERNAL:
        try:  # imported defensively: a missing or broken module disables its sub-command only
            module = importlib.import_module(module_name)
        except Exception as e:  # noqa: BLE001
            logger.debug("xllama eval %s unavailable: %s", name, e)
            continue
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_eval_run=module.run, _prog=f"xllama eval {name}")


def run(args: argparse.Namespace) -> int:
    return int(args._eval_run(args) or 0)


def _summary(record: dict) -> None:
    from xllama.distributed import is_main_process

    if not is_main_process():  # under `accelerate launch`, rank 0 reports for all
        return
    print(json.dumps({"results": record["extra"].get("results_file"), "scores": record["scores"]},
                     ensure_ascii=False, indent=2))


def run_translation(args: argparse.Namespace) -> int:
    from xllama.distributed import init_distributed
    from xllama.eval.translation import evaluate_translation

    init_distributed()  # `accelerate launch -m xllama eval ...`: each process generates a shard

    options = {k: v for k, v in (("comet_model", args.comet_model), ("spm_model", args.spm_model),
                                 ("bleu_tokenize", args.bleu_tokenize), ("cometkiwi_model", args.cometkiwi_model),
                                 ("xcomet_model", args.xcomet_model), ("spbleu_tokenize", args.spbleu_tokenize))
               if v is not None}
    record = evaluate_translation(
        args.model, data=args.data, pairs=args.pairs, prompt=args.prompt, num_beams=args.beams,
        max_new_tokens=args.max_new_tokens, batch_tokens=args.batch_tokens, batch_size=args.batch_size,
        limit=args.limit, metrics=args.metrics, out=args.out, split=args.split, cache=not args.no_cache,
        dtype=args.dtype, device=args.device, progress=not args.no_progress, metric_options=options,
        overwrite=args.overwrite,
    )
    _summary(record)
    return 0


def run_qa(args: argparse.Namespace) -> int:
    from xllama.distributed import init_distributed
    from xllama.eval.qa import evaluate_qa

    init_distributed()  # `accelerate launch -m xllama eval ...`: each process generates a shard

    record = evaluate_qa(
        args.model, data=args.data, langs=args.lang, max_new_tokens=args.max_new_tokens,
        batch_tokens=args.batch_tokens, batch_size=args.batch_size, limit=args.limit, out=args.out,
        cache=not args.no_cache, dtype=args.dtype, device=args.device, progress=not args.no_progress,
        overwrite=args.overwrite, prompt=args.prompt,
    )
    _summary(record)
    return 0
