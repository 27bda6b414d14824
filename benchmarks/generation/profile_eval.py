"""Where the time of a CPU evaluation goes: prompt lengths, the batch plan, and per batch its wall time, its
decoding steps and the step at which each row ended (EOS or the end of its first line; "max" = cut at
max_new_tokens). Uses the generation engine as `xllama eval` does, on a few examples.

  python benchmarks/generation/profile_eval.py --model DIR --task qa --lang zh -n 20
  python benchmarks/generation/profile_eval.py --model DIR --task en-zh -n 20 --max-new-tokens 256

Convert a GGUF model to a folder once first (each process otherwise spends ~50 s converting it). Prints one
JSON line per batch and a summary; give the machine and `uptime`'s load average with any figure you quote.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", default="qa", help="qa, or a translation direction such as en-zh")
    parser.add_argument("--lang", default="zh", help="QA language")
    parser.add_argument("--prompt", default="alpaca", help="translation prompt style")
    parser.add_argument("-n", type=int, default=20, help="examples")
    parser.add_argument("--max-new-tokens", type=int, help="default: eval's (qa 64, translation 256)")
    parser.add_argument("--batch-tokens", type=int)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--shared", default=os.environ.get("XLLAMA_SHARED", "../shared"))
    args = parser.parse_args()

    import torch

    from xllama.eval import generate as engine
    from xllama.eval.generate import DEFAULT_BATCH_TOKENS, BatchProgress, load_for_generation, plan_batches

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "qa":
        from xllama.data.evalsets import load_squad
        from xllama.eval.qa import DEFAULT_MAX_NEW_TOKENS, qa_prompt

        examples = load_squad(f"{args.shared}/data/eval/xquad", args.lang)[: args.n]
        prompts = [qa_prompt(e.context, e.question) for e in examples]
    else:
        from xllama.data.evalsets import load_flores_pair
        from xllama.eval.translation import DEFAULT_MAX_NEW_TOKENS
        from xllama.prompts import translation_prompt

        src, tgt = args.task.split("-")
        sources, _ = load_flores_pair(f"{args.shared}/data/eval/flores101/devtest", src, tgt, "devtest")
        prompts = [translation_prompt(args.prompt, src, tgt, s) for s in sources[: args.n]]
    max_new_tokens = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS

    started = time.perf_counter()
    model, tokenizer = load_for_generation(args.model, device="cpu")
    loaded = time.perf_counter() - started
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    budget = args.batch_tokens or DEFAULT_BATCH_TOKENS["cpu"]
    plan = plan_batches(lengths, max_new_tokens, budget)
    print(json.dumps({"load_s": round(loaded, 1), "threads": torch.get_num_threads(), "prompt_tokens": lengths,
                      "total_prompt_tokens": sum(lengths), "batches": [len(b) for b in plan],
                      "batch_tokens": budget, "max_new_tokens": max_new_tokens}), flush=True)

    ends: dict[int, int] = {}
    width = {"value": 0}
    original_call = BatchProgress.__call__

    def watch(self, input_ids, stopped=None):  # record the step at which each row ends
        before = None if self.finished is None else self.finished.clone()
        original_call(self, input_ids, stopped)
        for row in range(input_ids.shape[0]):
            if self.finished is not None and self.finished[row] and (before is None or not before[row]):
                ends[row] = input_ids.shape[1] - width["value"]

    original_batch = engine._generate_batch
    batches = []

    def timed(model, tokenizer, sequences, *rest):
        ends.clear()
        width["value"] = max(map(len, sequences))
        begin = time.perf_counter()
        texts = original_batch(model, tokenizer, sequences, *rest)
        batches.append({"rows": len(sequences), "prompt_width": width["value"],
                        "seconds": round(time.perf_counter() - begin, 1),
                        "end_step_per_row": [ends.get(r, "max") for r in range(len(sequences))]})
        print(json.dumps(batches[-1]), flush=True)
        return texts

    BatchProgress.__call__ = watch
    engine._generate_batch = timed
    begin = time.perf_counter()
    outputs = engine.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_tokens=budget,
                              progress=True)
    seconds = time.perf_counter() - begin
    cut = sum(e == "max" for b in batches for e in b["end_step_per_row"])
    print(json.dumps({"generate_s": round(seconds, 1), "examples": len(prompts), "rows_cut_at_max": cut,
                      "first_outputs": [o[:80] for o in outputs[:3]]}, ensure_ascii=False))


if __name__ == "__main__":
    main()
