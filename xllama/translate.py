"""Translate sentences or a file with a tuned model, in the x-LLM (Alpaca) prompt or ALMA's.

The prompt defaults to Alpaca, the one x-LLaMA/m-LLaMA models are trained on and `xllama eval translation`'s
default too; ALMA-trained models need --prompt alma.

Examples:
  xllama translate --model runs/x-llama-zh/final --src en --tgt zh "I love machine translation."
  xllama translate --model haoranxu/ALMA-7B --prompt alma --src zh --tgt en "我爱机器翻译。"
  xllama translate --model runs/alma-stage2/best --prompt alma --src de --tgt en --input news.de --output news.en
  xllama translate --model runs/alma-stage1/final --adapter runs/alma-lora/final/adapter --prompt alma --src en \
      --tgt cs "Hello"
  xllama translate --model model.Q4_1.gguf --src en --tgt de --input in.txt --output out.txt --beams 5

The model is a merged checkpoint (a folder or Hub id), a base model plus a peft LoRA adapter (--adapter; the
adapter's shapes are checked against the base), or a GGUF file. Files are one segment per line; blank lines stay
blank in the output, which is written atomically. Generation uses the shared engine (xllama.eval.generate):
length-sorted batches, greedy or beam search, each answer cut at the end of its first line.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from xllama.errors import XllamaError
from xllama.prompts import DEFAULT_PROMPT, PROMPT_STYLES

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# peft's saved LoRA weights: "<prefix>.<module path>.lora_A.weight" (A: r x in, B: out x r)
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="*", help="segment(s) to translate (or use --input)")
    parser.add_argument("--model", help="merged model: Hub id, checkpoint folder or .gguf file (the base model "
                        "with --adapter; default there: the adapter's base_model_name_or_path)")
    parser.add_argument("--adapter", help="a peft LoRA adapter folder to apply to --model")
    parser.add_argument("--src", required=True, help="source language code, e.g. zh")
    parser.add_argument("--tgt", required=True, help="target language code, e.g. en")
    parser.add_argument("--input", help="a text file, one segment per line ('-' for stdin)")
    parser.add_argument("--output", help="write translations here (atomically) instead of stdout")
    parser.add_argument("--prompt", choices=PROMPT_STYLES, default=DEFAULT_PROMPT,
                        help="alpaca: the x-LLM Alpaca instruction x-LLaMA models are trained on; alma: ALMA's "
                        "prompt, for ALMA-trained models (default: %(default)s, as in `xllama eval translation`)")
    parser.add_argument("--beams", type=int, default=1, help="beam size (1: greedy, the default)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest translation in tokens")
    parser.add_argument("--batch-size", type=int, help="segments per batch (default: a token budget)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype (default: bfloat16 on a GPU, the checkpoint's on a CPU)")


def check_pair(src: str, tgt: str) -> tuple[str, str]:
    """Validated ISO codes; an unknown code or a same-language pair is an error naming the pair."""
    from xllama.languages import get_language

    try:
        a, b = get_language(src).code, get_language(tgt).code
    except XllamaError as e:
        raise XllamaError(f"unknown language pair {src}-{tgt}: {e}") from None
    if a == b:
        raise XllamaError(f"unknown language pair {src}-{tgt}: source and target are the same language")
    return a, b


def read_segments(text: list[str], input_path: str | None) -> list[str]:
    """The segments to translate, from the arguments or a file; nothing to translate is an error."""
    if text and input_path:
        raise XllamaError("give the text as arguments or with --input FILE, not both")
    if input_path:
        if input_path == "-":
            content = sys.stdin.read()
        else:
            path = Path(input_path)
            if not path.is_file():
                raise XllamaError(f"input file not found: {path}")
            content = path.read_text(encoding="utf-8")
        segments = content.split("\n")
        if segments and segments[-1] == "":
            segments.pop()
        segments = [s.rstrip("\r") for s in segments]
        if not any(s.strip() for s in segments):
            raise XllamaError(f"input {input_path} is empty: nothing to translate")
        return segments
    if not text:
        raise XllamaError("nothing to translate: give TEXT arguments or --input FILE")
    if not any(t.strip() for t in text):
        raise XllamaError("the text to translate is empty")
    return [" ".join(t.split("\n")) for t in text]


# --- loading -----------------------------------------------------------------------------------------------


def _is_adapter(path) -> bool:
    return path is not None and (Path(path) / ADAPTER_CONFIG).is_file() and not (Path(path) / "config.json").is_file()


def check_adapter(base_model, adapter_dir, base_name: str | None = None) -> None:
    """Raise when a LoRA adapter cannot belong to ``base_model``: a target module it lacks, or LoRA matrices
    whose shapes do not fit the module's. A different ``base_model_name_or_path`` alone is only a warning (the
    same model is often stored under another name)."""
    import json

    from peft.utils import load_peft_weights

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    trained_on = config.get("base_model_name_or_path") or "an unnamed model"
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    modules = dict(base_model.named_modules())
    problems = []
    for key, tensor in weights.items():
        match = _LORA_KEY.match(key)
        if not match:
            continue
        name, which = match.groups()
        module = modules.get(name)
        if module is None:
            problems.append(f"the base has no module {name}")
            continue
        fan_in = getattr(module, "in_features", None)
        fan_out = getattr(module, "out_features", None)
        if fan_in is None or fan_out is None:
            continue
        expected_dim, actual = (fan_in, tensor.shape[1]) if which == "A" else (fan_out, tensor.shape[0])
        if actual != expected_dim:
            problems.append(f"{name}: lora_{which} is {tuple(tensor.shape)} but the module is {fan_in} -> {fan_out}")
    if not any(_LORA_KEY.match(k) for k in weights):
        problems.append("the adapter holds no LoRA weights")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise XllamaError(f"adapter {adapter_dir} does not match the base model {base_name or ''}: "
                          f"{'; '.join(problems[:3])}{more}. It was trained on {trained_on}.")
    if base_name and config.get("base_model_name_or_path") and \
            _same_name(config["base_model_name_or_path"]) != _same_name(base_name):
        log.warning("adapter %s was trained on %s, applied to %s: the shapes match, but check it is the same model",
                    adapter_dir, config["base_model_name_or_path"], base_name)


def _same_name(name: str) -> str:
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def adapter_base(adapter_dir) -> str:
    import json

    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise XllamaError(f"adapter {adapter_dir} does not name its base model: pass --model")
    return base


def _adapter_tokenizer_source(adapter_dir: Path) -> str | None:
    """The adapter's own tokenizer, else that of the run's final/ folder holding it (None: the base model's)."""
    for folder in (adapter_dir, adapter_dir.parent):
        if (folder / "tokenizer_config.json").is_file():
            return str(folder)
    return None


def load_translator(model: str | None, adapter: str | None = None, device: str | None = None,
                    dtype: str | None = None):
    """(model, tokenizer) ready to generate: a merged model, a GGUF file, or a base model with a LoRA adapter
    merged into it (merging makes generation as fast as with a merged checkpoint)."""
    from xllama.eval.generate import default_device, load_for_generation
    from xllama.modeling import load_model, load_tokenizer, resolve_model

    if adapter is None and _is_adapter(model):  # --model points at an adapter folder
        model, adapter = None, model
    if adapter is None:
        if not model:
            raise XllamaError("give --model (a checkpoint folder, Hub id or .gguf file)")
        return load_for_generation(model, dtype=dtype, device=device)

    adapter_dir = Path(adapter)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise XllamaError(f"{adapter_dir} is not a peft adapter folder (no {ADAPTER_CONFIG})")
    base = model or adapter_base(adapter_dir)
    device = device or default_device()
    if dtype is None:
        dtype = "bfloat16" if device.startswith("cuda") else "auto"
    source = resolve_model(base)
    tokenizer = load_tokenizer(_adapter_tokenizer_source(adapter_dir) or source)
    base_model = load_model(source, dtype=dtype)
    check_adapter(base_model, adapter_dir, base)
    if len(tokenizer) > base_model.get_input_embeddings().weight.shape[0]:
        raise XllamaError(f"the tokenizer has {len(tokenizer)} tokens but {base}'s embedding only "
                          f"{base_model.get_input_embeddings().weight.shape[0]} rows: wrong base model?")
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError) as e:  # shapes were checked; anything else peft refuses
        raise XllamaError(f"adapter {adapter_dir} cannot be applied to {base}: {str(e).splitlines()[0]}") from None
    merged.to(device)
    merged.eval()
    return merged, tokenizer


# --- translating -------------------------------------------------------------------------------------------


def translate(model, tokenizer, segments: list[str], src: str, tgt: str, prompt: str = DEFAULT_PROMPT,
              num_beams: int = 1, max_new_tokens: int = 256, batch_size: int | None = None,
              progress: bool = True) -> list[str]:
    """One translation per segment, in order; blank segments stay blank (and are not sent to the model)."""
    from xllama.eval.generate import generate
    from xllama.prompts import translation_prompt

    src, tgt = check_pair(src, tgt)
    todo = [i for i, s in enumerate(segments) if s.strip()]
    prompts = [translation_prompt(prompt, src, tgt, segments[i].strip()) for i in todo]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       num_beams=num_beams, stop_at_newline=True, progress=progress, desc=f"translating {src}-{tgt}")
    result = [""] * len(segments)
    for i, text in zip(todo, outputs):
        result[i] = text
    return result


def run(args) -> int:
    from xllama.io import atomic_write_text

    src, tgt = check_pair(args.src, args.tgt)
    segments = read_segments(args.text, args.input)
    if args.beams < 1:
        raise XllamaError(f"--beams must be at least 1 (got {args.beams})")
    if args.max_new_tokens < 1:
        raise XllamaError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    if args.batch_size is not None and args.batch_size < 1:
        raise XllamaError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.adapter is None and args.model is None:
        raise XllamaError("give --model (a checkpoint folder, Hub id or .gguf file)")
    dtype = None if args.dtype in (None, "auto") else args.dtype
    model, tokenizer = load_translator(args.model, args.adapter, device=args.device, dtype=dtype)
    outputs = translate(model, tokenizer, segments, src, tgt, prompt=args.prompt, num_beams=args.beams,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        progress=args.output is not None or len(segments) > 1)
    text = "".join(line.replace("\n", " ") + "\n" for line in outputs)
    if args.output:
        atomic_write_text(args.output, text)
        log.info("wrote %d translations to %s", len(outputs), args.output)
    else:
        sys.stdout.write(text)
    return 0
