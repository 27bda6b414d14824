"""Training data for each recipe task: build (or load) the text mix, then tokenise it with the right loss mask.

A task module provides

- ``load_text(recipe) -> (Dataset, manifest)``: the text (a ``datasets.Dataset``, possibly memory-mapped);
- ``texts(dataset)``: raw strings (to train the quickstart's BPE tokenizer);
- ``tokenize(dataset, tokenizer, recipe, writer) -> stats``: writes every training example into ``writer`` (a
  :class:`xllama.train.store.StoreWriter` on ``RUN/store``) batch by batch, as token ids and a prompt length
  (tokens before it carry no loss), with ``segments`` for examples made of several sequences; returns a stats
  dict, saved as ``RUN/store/stats.json``;

and optionally ``objective(recipe)`` (the loss; default token cross-entropy) and ``train(recipe, run_dir,
resume, overrides) -> summary`` (what ``xllama train`` runs for the task; default
:func:`xllama.train.trainer.train`).
"""

from __future__ import annotations

import importlib

from xllama.errors import XllamaError

# task -> module implementing load_text / texts / tokenize
TASK_MODULES = {
    "instruct": "xllama.train.data",
    "alma-monolingual": "xllama.alma.data",
    "alma-parallel": "xllama.alma.stage2",  # ALMA stage 2: xllama.alma.data's text + train() keeping the best epoch
    "alma-cpo": "xllama.alma.cpo",  # ALMA-R stage 3: preference triplets; provides objective(recipe) (CPO loss)
}


def task_module(task: str):
    if task not in TASK_MODULES:
        raise XllamaError(f"unknown task {task!r}; known tasks: {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task])


def task_train(task: str):
    """What `xllama train` runs for ``task``: its module's ``train(recipe, run_dir, resume, overrides)``, else
    the trainer's."""
    run = getattr(task_module(task), "train", None)
    if run is None:
        from xllama.train.trainer import train as run
    return run


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


def tokenize(dataset, tokenizer, recipe, writer) -> dict:
    from xllama.data.tokenize import tokenize_instructions

    return tokenize_instructions(dataset, tokenizer, recipe.train.max_length, writer)
