"""Sentences per second on FLORES devtest: xllama's generation engine vs the reference way, same run, same model.

Reference: unsorted batches of 8 through plain ``model.generate`` with left padding, a fixed max_new_tokens,
stopping at EOS only, and the first line of the answer cut afterwards. xllama: ``xllama.eval.generate``
(length-sorted batches packed to a token budget, per-sequence stop at the end of the first line).
Both decode greedily, so their outputs must be identical; the script counts and shows any difference.

    python benchmarks/generation/bench_generate.py --limit 64          # CPU: a small slice
    python benchmarks/generation/bench_generate.py                     # GPU: bf16, the whole devtest

Writes ``<out>/bench_<device>.md`` and ``.json`` (default out: runs/benchmarks/generation, ignored by git;
the committed record is RESULTS.md beside this file).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a checkout without installing

from benchmarks.common import cpu_name  # noqa: E402
from xllama.io import atomic_write_json, atomic_write_text, shared_dir  # noqa: E402


def reference_generate(model, tokenizer, prompts, max_new_tokens, eos_ids, batch_size=8):
    """The way evaluation scripts usually do it: input order, fixed-size batches, EOS-only stopping."""
    import torch

    from xllama.eval.generate import first_line

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    outputs = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                          return_token_type_ids=False).to(device)
        with torch.inference_mode():
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                       eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        outputs.extend(first_line(t) for t in texts)
    return outputs


def shown(path: str) -> str:
    """A path as recorded in the results: the shared folder as $XLLAMA_SHARED, not this machine's path."""
    shared = str(shared_dir().resolve())
    resolved = str(Path(path).resolve()) if Path(path).exists() else path
    return resolved.replace(shared, "$XLLAMA_SHARED", 1) if resolved.startswith(shared) else path


def machine() -> dict:
    import torch
    import transformers

    cpu = cpu_name()
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timed(fn):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main(argv=None) -> int:
    default_model = shared_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    default_data = shared_dir() / "data" / "eval" / "flores101" / "devtest"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model),
                        help="Hub id, checkpoint or .gguf (default: the shared SmolLM2)")
    parser.add_argument("--data", default=str(default_data) if default_data.is_dir() else "flores101",
                        help="FLORES folder or flores101/flores200 (default: the shared FLORES-101 devtest)")
    parser.add_argument("--pair", default="en-zh")
    parser.add_argument("--prompt", default="alpaca", choices=["alpaca", "alma"])
    parser.add_argument("--limit", type=int, help="first N sentences (default: all 1,012)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, help="xllama's batch budget (default: the engine's)")
    parser.add_argument("--ref-batch-size", type=int, default=8)
    parser.add_argument("--dtype", help="default: bfloat16 on GPU, the checkpoint's on CPU")
    parser.add_argument("--device", help="default: cuda when available")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", default=str(HERE.parent.parent / "runs" / "benchmarks" / "generation"))
    args = parser.parse_args(argv)

    import torch

    from xllama.data.evalsets import load_flores
    from xllama.eval.generate import DEFAULT_BATCH_TOKENS, eos_token_ids, generate, load_for_generation
    from xllama.languages import parse_pair
    from xllama.prompts import translation_prompt

    if args.threads:
        torch.set_num_threads(args.threads)
    src, tgt = parse_pair(args.pair)
    sources = load_flores(args.data, src)[: args.limit]
    prompts = [translation_prompt(args.prompt, src, tgt, s) for s in sources]
    model, tokenizer = load_for_generation(args.model, dtype=args.dtype, device=args.device)
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(model, tokenizer)
    batch_tokens = args.batch_tokens or DEFAULT_BATCH_TOKENS["cuda" if device.type == "cuda" else "cpu"]
    print(f"{len(prompts)} sentences {args.pair}, {args.model} on {device} ({next(model.parameters()).dtype})",
          flush=True)

    # Warm-up (kernels, allocator, the engine's per-tokenizer newline table) outside the timings.
    reference_generate(model, tokenizer, prompts[:2], 4, eos_ids)
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, batch_tokens=batch_tokens, progress=False)

    ref, ref_s = timed(lambda: reference_generate(model, tokenizer, prompts, args.max_new_tokens, eos_ids,
                                                  args.ref_batch_size))
    print(f"reference: {ref_s:.1f} s", flush=True)
    ours, ours_s = timed(lambda: generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                          batch_tokens=batch_tokens, progress=True))
    print(f"xllama:    {ours_s:.1f} s", flush=True)

    same = sum(a == b for a, b in zip(ref, ours))
    differences = [{"index": i, "reference": a, "xllama": b} for i, (a, b) in enumerate(zip(ref, ours)) if a != b]
    n = len(prompts)
    result = {
        "machine": machine(), "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "model": shown(args.model), "data": shown(args.data), "pair": args.pair, "prompt": args.prompt, "sentences": n,
        "max_new_tokens": args.max_new_tokens,
        "reference": {"method": f"unsorted batches of {args.ref_batch_size}, model.generate, EOS stop, first line after",
                      "seconds": ref_s, "sentences_per_s": n / ref_s},
        "xllama": {"method": f"xllama.eval.generate, sorted, batch_tokens={batch_tokens}, stop at first line",
                   "seconds": ours_s, "sentences_per_s": n / ours_s},
        "speedup": ref_s / ours_s, "identical_outputs": same, "differences": differences[:20],
    }
    m = result["machine"]
    hardware = m.get("gpu") or f"{m['cpu']}, {m['cpu_cores']} cores, {m['torch_threads']} torch threads"
    table = "\n".join([
        f"FLORES devtest {args.pair}, {n} sentences, `{Path(args.model).name}` ({result['dtype']}) on {hardware}; "
        f"greedy, max_new_tokens={args.max_new_tokens}, {args.prompt} prompt",
        "",
        "| method | seconds | sentences/s | speed-up | identical outputs |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| reference (batches of {args.ref_batch_size}, EOS only) | {ref_s:.1f} | {n / ref_s:.2f} | 1.00x | – |",
        f"| xllama engine | {ours_s:.1f} | {n / ours_s:.2f} | {ref_s / ours_s:.2f}x | {same}/{n} |",
    ]) + "\n"
    print()
    print(table)
    for d in differences[:5]:
        print(f"differs at {d['index']}: reference {d['reference']!r} vs xllama {d['xllama']!r}")
    out = Path(args.out)
    stem = f"bench_{'cuda' if device.type == 'cuda' else 'cpu'}"
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", table)
    print(f"wrote {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
