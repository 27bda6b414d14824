"""Training data for each recipe task: build (or load) the text mix, then tokenise it with the right loss mask.

A task module provides ``load_text(recipe) -> (Dataset, manifest)``, ``texts(dataset)`` (raw text, used to
train the quickstart's BPE tokenizer) and ``tokenize(dataset, tokenizer, recipe) -> (Dataset, stats)`` whose
output has ``input_ids`` and ``prompt_length`` (tokens before it carry no loss).
"""

from __future__ import annotations

import importlib

from xllama.errors import XllamaError

# task -> module implementing load_text / texts / tokenize
TASK_MODULES = {
    "instruct": "xllama.train.data",
    "alma-monolingual": "xllama.alma.data",
    "alma-parallel": "xllama.alma.data",
    "alma-cpo": "xllama.alma.cpo",  # ALMA-R stage 3: preference triplets; provides objective(recipe) (CPO loss)
}


def task_module(task: str):
    if task not in TASK_MODULES:
        raise XllamaError(f"unknown task {task!r}; known tasks: {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task])


# --- the instruct task (x-LLaMA / m-LLaMA / Alpaca): Alpaca prompt, loss on the response + EOS --------------

def load_text(recipe):
    from xllama.data.mix import MixSpec, build_mix, load_mix

    data = recipe.data
    if "path" in data:
        if set(data) != {"path"}:
            raise XllamaError(f"recipe.data: with 'path' (a built mix) no other key is allowed, got {sorted(data)}")
        return load_mix(data["path"])
    return build_mix(MixSpec.from_dict(data, where="recipe.data"))


def texts(dataset):
    for row in dataset:
        yield "\n".join((row["instruction"], row["input"], row["output"]))


def tokenize(dataset, tokenizer, recipe):
    from xllama.data.tokenize import tokenize_instructions

    return tokenize_instructions(dataset, tokenizer, recipe.train.max_length)
