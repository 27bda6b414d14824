"""Instruction-tune a causal LM from a recipe: x-LLaMA (one language), m-LLaMA (several), ALMA stages.

Examples:
  xllama train --recipe quickstart --lang zh                      # CPU, offline, minutes
  xllama train --lang zh                                          # recipe x-llama-7b (GPU)
  accelerate launch --config_file recipes/accelerate/fsdp.yaml -m xllama train --lang ar,el,hi,tr,vi,zh
  xllama train --recipe x-llama-7b --lang zh --out runs/x-zh --resume
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", help="recipe name in recipes/ or a YAML path (default: x-llama-7b for one "
                        "language, m-llama-7b for several)")
    parser.add_argument("--lang", help="target language(s), e.g. zh or ar,el,hi,tr,vi,zh (MuIT)")
    parser.add_argument("--model", help="override model.name_or_path: Hub id, local checkpoint or .gguf file")
    parser.add_argument("--data", help="a mix built by `xllama data build` (overrides the recipe's data section)")
    parser.add_argument("--out", help="run directory (default runs/<recipe>-<langs>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set train.learning_rate=1e-5 (repeatable)")
    parser.add_argument("--max-steps", type=int, help="stop after N optimiser steps (smoke tests)")
    parser.add_argument("--dry-run", action="store_true", help="build and tokenise the data, report it, do not train")
    parser.add_argument("--json", action="store_true", help="print the run's summary as JSON (it is always saved in "
                        "RUN/summary.json) instead of the short human summary")


def run(args) -> int:
    from xllama.languages import parse_languages
    from xllama.train.config import load_recipe

    languages = parse_languages(args.lang) if args.lang else None
    name = args.recipe or ("m-llama-7b" if languages and len(languages) > 1 else "x-llama-7b")
    overrides = list(args.set)
    if args.model:
        overrides += [f"model.name_or_path={args.model}", "model.init=null"]
    if args.max_steps:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.data:
        overrides.append(f"data={{path: {json.dumps(str(Path(args.data).resolve()))}}}")
    recipe = load_recipe(name, overrides, languages=None if args.data else languages)
    out = Path(args.out) if args.out else Path("runs") / f"{recipe.name}-{'-'.join(languages or ['default'])}"

    if args.dry_run:
        from xllama.train.trainer import RunDir, _settle_config, data_stats, prepare_data

        run_dir = RunDir(out)
        recipe = _settle_config(recipe, run_dir, args.resume, overrides)
        prepare_data(recipe, run_dir)
        manifest = json.loads((run_dir.data / "manifest.json").read_text())
        stats = data_stats(run_dir)
        print(json.dumps({"run_dir": str(out), "manifest": manifest, "tokenized": stats}, indent=2, ensure_ascii=False))
        return 0

    from xllama.train.data import task_train

    summary = task_train(recipe.task)(recipe, out, resume=args.resume, overrides=overrides)
    validation = summary.pop("validation", None)  # a task that selects among checkpoints (ALMA stage 2)
    for c in (validation or {}).get("candidates", []):
        print(f"{c['name']:>12}  epoch {c['epoch']:<6g} validation loss {c['loss']:.4f}")
    print(json.dumps(summary, indent=2) if args.json else describe(summary, recipe, out, languages))
    return 0


def describe(summary: dict, recipe, out: Path, languages: list[str] | None) -> str:
    """The end of `xllama train` for a person: what was done, where the model is, what to run next."""
    if summary["status"] != "completed":
        return (f"\nstopped at step {summary['steps']} of {summary['total_steps']}: a checkpoint is saved in "
                f"{out / 'checkpoints'}.\ncontinue: run the same command again with --resume")
    model = summary.get("best_model") or summary["final_model"]
    early = " (stopped early by train.max_steps)" if summary["steps"] < summary["total_steps"] else ""
    lines = [
        "",
        f"trained {summary['steps']} of {summary['total_steps']} steps{early} on {summary['examples']:,} examples, "
        f"{summary['parameters'] / 1e6:,.1f}M parameters, in {_duration(summary['wall_time_s'])}",
        f"model:    {model}  (a Hugging Face folder: from_pretrained loads it)",
        f"details:  {out / 'summary.json'}, {out / 'metrics.jsonl'}",
        "next:",
    ]
    lang = _first_language(recipe, languages)
    prompt = "alpaca" if recipe.task == "instruct" else "alma"
    lines.append(f'  xllama translate --model {model} --prompt {prompt} --src en --tgt {lang} '
                 f'"The weather is nice today."')
    lines.append(f"  xllama eval translation --model {model} --prompt {prompt} --data flores101 "
                 f"--pairs en-{lang},{lang}-en --limit 50")
    return "\n".join(lines)


def _first_language(recipe, languages: list[str] | None) -> str:
    """The recipe's first non-English language, for the example commands ('XX' when it names none)."""
    data = recipe.data if isinstance(recipe.data, dict) else {}
    pairs = [p for key in ("parallel", "pairs") if isinstance(data.get(key), dict) for p in data[key]]
    candidates = [*(languages or []), *(data.get("languages") or []), *(x for p in pairs for x in str(p).split("-"))]
    return next((c for c in candidates if c != "en"), "XX")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
