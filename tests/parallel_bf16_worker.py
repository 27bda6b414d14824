"""Launched by tests/test_parallel_bf16.py through torchrun: the first optimiser step of a recipe under FSDP2 with
bf16 parameters (xllama.train.parallel.build_and_shard), once per gradient-reduction dtype (float32, bfloat16).

usage: parallel_bf16_worker.py RECIPE.yaml RUN_DIR OUT.pt

RUN_DIR holds the prepared data (``RUN/tokenizer``, ``RUN/store``: trainer.prepare_data). Rank 0 saves to OUT.pt,
per reduce dtype: the full reduced gradient, the full weights before and after one AdamW step, the dtypes seen
(sharded master weights, their gradients, AdamW's state, the weight a decoder layer computes with) and the plan.
"""

import sys
from pathlib import Path

import torch
import yaml


def step_gradients(model, store, micro_batches, totals, objective, seed: int, world: int, pad_id: int) -> None:
    """Backward of step 0's micro-batches as the trainer's loop does it: one packed row each, dropout seeded by
    the row, ``loss * world`` (FSDP2 averages over ranks, so the reduced gradient is the step's sum)."""
    from xllama.train.packing import packed_row
    from xllama.train.parallel import row_seed

    for mb in micro_batches:
        row = {k: torch.from_numpy(v) for k, v in packed_row(store, mb, pad_id).items()}
        torch.manual_seed(row_seed(seed, 0, mb))
        loss, _ = objective(model, row, totals)
        (loss * world).backward()


def main(recipe_path: str, run_dir: str, out: str) -> None:
    from accelerate import Accelerator
    from torch.distributed.tensor import DTensor

    from xllama.modeling import load_tokenizer
    from xllama.train.attention import choose_attention
    from xllama.train.config import Recipe, from_dict, validate
    from xllama.train.packing import plan_step
    from xllama.train.parallel import build_and_shard
    from xllama.train.store import open_store
    from xllama.train.trainer import RunDir, build_model, build_optimizer, task_objective

    with open(recipe_path, encoding="utf-8") as f:
        recipe = validate(from_dict(Recipe, yaml.safe_load(f), recipe_path), recipe_path)
    run = RunDir(Path(run_dir))
    accelerator = Accelerator(cpu=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    tokenizer = load_tokenizer(str(run.tokenizer))
    store = open_store(run.store)
    attn = choose_attention(recipe.model.attn_implementation, True)
    objective = task_objective(recipe)
    t = recipe.train
    plan = plan_step(0, store, t.global_batch_size, t.micro_batch_tokens, world, t.seed)
    totals = objective.step_totals(store, [i for rank_mbs in plan for mb in rank_mbs for i in mb])
    results = {}
    for reduce_dtype in ("float32", "bfloat16"):
        t.reduce_dtype = reduce_dtype
        model, layout = build_and_shard(lambda meta: build_model(recipe, tokenizer, True, meta), recipe,
                                        accelerator, attn)
        seen = {}
        probe = model.model.layers[0].mlp.down_proj  # the weight as the layer computes with it (all-gathered)
        hook = probe.register_forward_pre_hook(lambda m, args: seen.update(compute=str(m.weight.dtype)))
        step_gradients(model, store, plan[rank], totals, objective, t.seed, world, tokenizer.pad_token_id)
        hook.remove()
        params = dict(model.named_parameters())
        assert all(isinstance(p, DTensor) for p in params.values())
        seen["master"] = sorted({str(p.to_local().dtype) for p in params.values()})
        seen["grad"] = sorted({str(p.grad.to_local().dtype) for p in params.values()})
        grads = {n: p.grad.full_tensor() for n, p in params.items()}
        before = {n: p.full_tensor() for n, p in params.items()}
        optimizer = build_optimizer(model, recipe, use_cpu=True)
        optimizer.step()
        seen["adam_state"] = sorted({str(v.to_local().dtype) for s in optimizer.state.values() for k, v in s.items()
                                     if k in ("exp_avg", "exp_avg_sq")})
        after = {n: p.full_tensor() for n, p in params.items()}
        results[reduce_dtype] = {"grads": grads, "before": before, "after": after, "dtypes": seen,
                                 "plan": layout.to_dict(), "micro_batches": len(plan[rank])}
    if rank == 0:
        torch.save(results, out)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:4])
