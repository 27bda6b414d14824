"""Validation loss for ALMA stage 2: the mean cross-entropy of a model on the target tokens of held-out pairs.

It is the quantity the training loss measures (target tokens and EOS only, every token weighing the same), on
ALMA's validation sets (WMT'21 ``valid.xx-en.json``), and it is what :mod:`xllama.alma.stage2` compares across
epochs to keep the best checkpoint. Batches are length-sorted and right-padded; no gradients.
"""

from __future__ import annotations

from xllama.errors import XllamaError


def validation_set(run_data_dir, tokenizer, max_length: int):
    """The validation pairs stored in a run's ``data/`` (written by ``load_text``), tokenised like training,
    with a ``direction`` column for per-direction losses."""
    from datasets import load_from_disk

    from xllama.alma.data import tokenize_translations

    text = load_from_disk(str(run_data_dir))
    if "split" not in text.column_names:
        raise XllamaError(f"{run_data_dir} holds no ALMA stage-2 text (no 'split' column)")
    dataset, stats = tokenize_translations(text, tokenizer, max_length, split="valid", keep_direction=True)
    return dataset, stats


def validation_loss(model, examples, pad_token_id: int, batch_tokens: int = 16384, device=None,
                    progress: bool = True, desc: str = "validation") -> dict:
    """Mean target-token loss of ``model`` on ``examples`` (columns input_ids, prompt_length, optional
    direction) -> {"loss", "tokens", "examples", "by_direction": {dir: {"loss", "tokens"}}}."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from xllama.train.packing import TokenStore, padded_batch

    if len(examples) == 0:
        raise XllamaError("the validation set is empty")
    store = TokenStore.from_dataset(examples)
    groups = examples["direction"] if "direction" in examples.column_names else ["all"] * len(examples)
    if device is None:
        device = next(model.parameters()).device
    from xllama.eval.generate import plan_batches

    from xllama.distributed import gather_objects, rank_and_world

    lengths = [int(n) for n in store.lengths]
    batches = plan_batches(lengths, 0, batch_tokens=max(batch_tokens, max(lengths)))
    # Under `accelerate launch` each process scores every world-th batch and the sums are gathered. Every
    # process runs the same number of forwards (a sharded or DDP model holds collectives in its forward):
    # one with fewer batches repeats its first one and discards the result.
    rank, world = rank_and_world()
    mine = batches[rank::world]
    rounds = -(-len(batches) // world)
    loss_by, tokens_by = loss_by_mine, tokens_by_mine = {}, {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k in tqdm(range(rounds), desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
                batch = mine[k] if k < len(mine) else None
                b = padded_batch(store, batch if batch is not None else batches[0], pad_token_id)
                labels = torch.from_numpy(b["labels"]).to(device)
                logits = model(input_ids=torch.from_numpy(b["input_ids"]).to(device),
                               attention_mask=torch.from_numpy(b["attention_mask"]).to(device),
                               use_cache=False).logits
                if batch is None:
                    continue
                token_loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                             reduction="none").view(labels.shape)
                per_example = token_loss.sum(dim=1).tolist()
                counts = (labels != -100).sum(dim=1).tolist()
                for i, loss, count in zip(batch, per_example, counts):
                    g = groups[i]
                    loss_by[g] = loss_by.get(g, 0.0) + loss
                    tokens_by[g] = tokens_by.get(g, 0) + count
    finally:
        model.train(was_training)
    if world > 1:  # every process's sums, added in rank order
        loss_by, tokens_by = {}, {}
        for part_loss, part_tokens in gather_objects((loss_by_mine, tokens_by_mine)):
            for g in part_loss:
                loss_by[g] = loss_by.get(g, 0.0) + part_loss[g]
                tokens_by[g] = tokens_by.get(g, 0) + part_tokens[g]
    tokens = sum(tokens_by.values())
    return {
        "loss": sum(loss_by.values()) / max(tokens, 1),
        "tokens": tokens,
        "examples": len(examples),
        "by_direction": {g: {"loss": loss_by[g] / max(tokens_by[g], 1), "tokens": tokens_by[g]}
                         for g in sorted(loss_by)},
    }
