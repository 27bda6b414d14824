"""The ``xllama`` command: one sub-command per pipeline stage, each defined in its own module.

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and imports heavy libraries (torch,
transformers) inside ``run`` so that ``xllama --help`` stays fast. Every XllamaError becomes a one-line
message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from xllama import __version__
from xllama.errors import XllamaError

# (command, module, one-line help). The order is the pipeline's.
COMMANDS = [
    ("data", "xllama.data.cli", "build and inspect CoIT/MuIT training mixes"),
    ("train", "xllama.train.cli", "instruction-tune a causal LM (x-LLaMA, m-LLaMA, ALMA) from a recipe"),
    ("eval", "xllama.eval.cli", "evaluate translation (FLORES/WMT) and QA (XQuAD/MLQA); score and report"),
    ("translate", "xllama.translate", "translate text or files with a tuned model"),
    ("scaling", "xllama.scaling.cli", "fit data-size scaling laws and allocate a parallel-data budget"),
    ("align", "xllama.align", "measure cross-lingual representation alignment across layers"),
    ("convert", "xllama.convert", "convert a GGUF file once into a standard Hugging Face model folder"),
]
# Sub-commands that belong under a command of a lower layer but need higher ones: (command, sub-command, module,
# help). `xllama data preference` generates and scores translations (eval), which xllama.data may not import.
SUBCOMMANDS = [
    ("data", "preference", "xllama.alma.preference", "build ALMA-R preference triplets: generate candidates, score, "
                                                     "keep best and worst"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xllama",
        description="Extend an English-centric LLM to other languages (x-LLaMA, m-LLaMA, ALMA).",
    )
    parser.add_argument("--version", action="version", version=f"xllama {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and other libraries' INFO messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # stage not installed in this build
                continue
            raise
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
        for parent, sub_name, sub_module_name, sub_help in SUBCOMMANDS:
            if parent == name:
                sub_module = importlib.import_module(sub_module_name)
                group = next(a for a in command._actions if isinstance(a, argparse._SubParsersAction))
                extra = group.add_parser(sub_name, help=sub_help, description=(sub_module.__doc__ or sub_help).strip(),
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
                sub_module.add_arguments(extra)
                extra.set_defaults(_run=sub_module.run, _prog=f"xllama {name} {sub_name}")
    return parser


def configure_logging(verbose: bool = False) -> None:
    """xllama's messages from INFO (DEBUG with -v); other libraries' (accelerate, datasets, torch) only from
    WARNING (INFO with -v), so their INFO lines do not bury ours; Python warnings are logged like the rest."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("xllama").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)


def main(argv: list[str] | None = None) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        with logging_redirect_tqdm():  # log lines print above a progress bar, not into it
            return int(args._run(args) or 0)
    except XllamaError as e:
        print(f"{getattr(args, '_prog', None) or 'xllama ' + args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xllama {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
