"""Convert a GGUF file once into a standard Hugging Face folder (what ``save_pretrained`` writes).

Examples:
  xllama convert ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m
  xllama convert model.Q4_1.gguf          # into the cache that every xllama command reads GGUF files from

De-quantising a GGUF file is slow (tens of seconds for a 135M model). Every xllama command that is given a
.gguf file converts it once into a cache keyed by the file's SHA-256 ($XLLAMA_CACHE/gguf/, default
~/.cache/xllama/gguf/) and reads that folder afterwards; this command does the same conversion on demand, into
the cache or into a folder of your choice. The folder holds float32 weights (model.safetensors), a config.json
and generation_config.json whose special tokens agree with the tokenizer, and the tokenizer as the GGUF file
defines it; plain transformers loads it with ``AutoModelForCausalLM.from_pretrained(DIR)``.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("gguf", help="the .gguf file")
    parser.add_argument("--out", help="output folder (default: the GGUF cache, $XLLAMA_CACHE or ~/.cache/xllama)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from xllama.errors import XllamaError
    from xllama.modeling import convert_gguf, resolve_model, via_gguf_cache

    source = resolve_model(args.gguf)
    if not source.gguf_file:
        raise XllamaError(f"{args.gguf} is not a .gguf file")
    if args.out:
        out = convert_gguf(source, args.out, overwrite=args.overwrite)
    else:
        cached = via_gguf_cache(source)  # converts into the cache, or finds it there
        if cached.gguf_file:
            raise XllamaError("the GGUF cache could not be written (see the warning above); pass --out DIR")
        out = cached.path
    print(f"converted {args.gguf} -> {out}\nuse it with: --model {out}")
    return 0
