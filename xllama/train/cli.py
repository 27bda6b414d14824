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
        from xllama.train.trainer import RunDir, _settle_config, prepare_data

        run_dir = RunDir(out)
        recipe = _settle_config(recipe, run_dir, args.resume)
        prepare_data(recipe, run_dir)
        manifest = json.loads((run_dir.data / "manifest.json").read_text())
        stats = json.loads((run_dir.tokenized / "stats.json").read_text())
        print(json.dumps({"run_dir": str(out), "manifest": manifest, "tokenized": stats}, indent=2, ensure_ascii=False))
        return 0

    from xllama.train.trainer import train

    if recipe.task == "alma-parallel" and recipe.data.get("valid"):  # ALMA stage 2: keep the best epoch
        from xllama.alma.stage2 import train_and_select

        summary = train_and_select(recipe, out, resume=args.resume)
        validation = summary.pop("validation", None)
        for c in (validation or {}).get("candidates", []):
            print(f"{c['name']:>12}  epoch {c['epoch']:<6g} validation loss {c['loss']:.4f}")
    else:
        summary = train(recipe, out, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0
