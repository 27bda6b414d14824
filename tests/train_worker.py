"""Launched by tests (torchrun / accelerate launch): train a recipe YAML into a run directory.

usage: train_worker.py RECIPE.yaml RUN_DIR [--resume] [--stop-after N]
"""

import argparse
import sys

import yaml

from xllama.train.config import Recipe, from_dict, validate
from xllama.train.trainer import train

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("run")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-after", type=int)
    args = parser.parse_args()
    with open(args.recipe, encoding="utf-8") as f:
        recipe = validate(from_dict(Recipe, yaml.safe_load(f), args.recipe), args.recipe)
    summary = train(recipe, args.run, resume=args.resume, stop_after=args.stop_after)
    sys.exit(0 if summary["status"] in ("completed", "interrupted") else 1)
