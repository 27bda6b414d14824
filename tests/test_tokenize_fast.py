"""encode_pairs splices the Alpaca template's ids around the tokenised instruction/input: the ids must be exactly
those of tokenising each prompt whole, on tricky inputs, and tokenizers where splicing is not exact must fall back."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from xllama.data.tokenize import _AlpacaSplicer, _fast_backend, _splicer_for, encode_pairs
from xllama.modeling import build_bpe_tokenizer
from xllama.prompts import alpaca_prompt

# (instruction, input, output): edges the splicing must get right or leave to the plain path.
TRICKY = [
    ("Give three tips for staying healthy.", "", "1. Eat well.\n2. Sleep.\n3. Move."),
    ("Translate into Chinese.", "The cat sat on the mat.", "猫坐在垫子上。"),
    ("", "", "an empty instruction"),
    ("", "only an input", "x"),
    ("Summarise:", "   ", "whitespace-only input: the no-input template"),
    (" leading space", "trailing space ", "y"),
    ("\nleading newline", "trailing newline\n", "z"),
    ("tab\t", "\tinput", "w"),
    ("用中文回答：天空为什么是蓝色的？", "瑞利散射", "因为瑞利散射。"),
    ("😀 emoji first", "last emoji 🎉", "🙂"),
    ("\u200bzero-width space first", "non-breaking space last\u00a0", "v"),
    ("'s a contraction", "ends with an apostrophe'", "u"),
    ("An instruction\n\n### Input:\nthat contains the separator", "and an input", "t"),
    ("<|endoftext|>", "<|endoftext|>", "special token text in the fields"),
    ("multi\n\nline\n instruction", "in  put", ":- starts with punctuation"),
    ("42", "3.14", "digits"),
]


def _rows(rows):
    return [alpaca_prompt(i, x) for i, x, _ in rows], [o for _, _, o in rows]


@pytest.fixture(scope="module")
def bpe(shared):
    records = json.loads((shared / "data/instructions/alpaca-tiny/alpaca_tiny.json").read_text())
    texts = [alpaca_prompt(r["instruction"], r["input"]) + r["output"] for r in records]
    # The tricky prompts many times over, so that the whitespace pieces the regex forms only inside a whole prompt
    # (" \n", "\n\n\n", "\t\n", ...) become tokens: without them a wrong splice could give the right ids.
    texts += [alpaca_prompt(i, x) + o for i, x, o in TRICKY] * 50
    return build_bpe_tokenizer(texts, vocab_size=600)


def _whole(tokenizer, prompts):
    return [tokenizer(p)["input_ids"] for p in prompts]


def test_spliced_ids_equal_whole_prompt_ids_on_tricky_inputs(bpe):
    prompts, outputs = _rows(TRICKY)
    splicer = _AlpacaSplicer.for_tokenizer(_fast_backend(bpe))
    assert splicer is not None  # a GPT-2-style byte-level BPE: splicing is exact, so it must be used
    spliced = [splicer.split(p) is not None for p in prompts]
    # clean outer edges are spliced (inner whitespace is fine); an empty instruction or whitespace or
    # zero-width characters at the edges of instruction...input take the plain path
    assert spliced == [True, True, False, False, True, False, False, True, True, True, False, True, True, True,
                       True, True]
    assert splicer.encode(_fast_backend(bpe), prompts)[0] == _whole(bpe, prompts)

    fast = encode_pairs(bpe, prompts, outputs, max_length=512)
    plain = encode_pairs(bpe, prompts, outputs, max_length=512, splice=False)
    assert fast[:2] == plain[:2] and fast[2] == plain[2]
    assert fast[1] == [len(ids) for ids in _whole(bpe, prompts)]


def test_truncation_and_dropping_are_unchanged(bpe):
    prompts, outputs = _rows(TRICKY)
    shortest = min(len(ids) for ids in _whole(bpe, prompts))
    max_length = shortest + 3  # some examples truncated, the longer prompts dropped
    fast = encode_pairs(bpe, prompts, outputs, max_length=max_length)
    plain = encode_pairs(bpe, prompts, outputs, max_length=max_length, splice=False)
    assert fast[:2] == plain[:2] and fast[2] == plain[2]
    assert fast[2].truncated > 0 and fast[2].dropped_no_target > 0


def test_tokenizer_where_splicing_is_not_exact_falls_back(bpe):
    # A byte-level BPE that adds a space before each text: a field tokenised alone starts with "Ġ", inside the
    # prompt it does not, so the probes differ and every prompt is tokenised whole.
    tok = Tokenizer.from_str(bpe.backend_tokenizer.to_str())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    prefixed = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                       add_prefix_space=True)  # else transformers resets it to False
    assert prefixed("a")["input_ids"] == prefixed(" a")["input_ids"]
    assert _AlpacaSplicer.for_tokenizer(_fast_backend(prefixed)) is None
    prompts, outputs = _rows(TRICKY)
    fast = encode_pairs(prefixed, prompts, outputs, max_length=512)
    assert fast[:2] == encode_pairs(prefixed, prompts, outputs, max_length=512, splice=False)[:2]
    assert fast[1] == [len(ids) for ids in _whole(prefixed, prompts)]


def test_sentencepiece_style_tokenizer_falls_back():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    texts = [alpaca_prompt(i, x) + o for i, x, o in TRICKY]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"],
                                                       show_progress=False))
    spm = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
    assert _AlpacaSplicer.for_tokenizer(_fast_backend(spm)) is None
    prompts, outputs = _rows(TRICKY)
    assert encode_pairs(spm, prompts, outputs, 512)[:2] == encode_pairs(spm, prompts, outputs, 512, splice=False)[:2]


def test_added_tokens_are_seen_and_change_the_verdict(bpe):
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(bpe.backend_tokenizer.to_str()),
                                  eos_token="<|endoftext|>", pad_token="<|pad|>")
    prompts, outputs = _rows(TRICKY)
    assert _splicer_for(tok, _fast_backend(tok)) is not None
    # An added token inside the template: the cached head/tail ids must be recomputed, not reused.
    tok.add_tokens(["### Response:"])
    splicer = _splicer_for(tok, _fast_backend(tok))
    assert splicer is not None and splicer.tail_ids[-1] == tok.convert_tokens_to_ids("### Response:")
    assert encode_pairs(tok, prompts, outputs, 512)[:2] == encode_pairs(tok, prompts, outputs, 512, splice=False)[:2]
    # An added token that spans a newline could cross the template's edges: no splicing at all.
    tok.add_tokens([".\n\n###"])
    assert _splicer_for(tok, _fast_backend(tok)) is None
    assert encode_pairs(tok, prompts, outputs, 512)[:2] == encode_pairs(tok, prompts, outputs, 512, splice=False)[:2]


def test_non_alpaca_prompts_are_tokenised_whole(bpe):
    prompts = ["Translate this from Chinese to English:\nChinese: 你好\nEnglish:", "plain text prompt", ""]
    outputs = [" Hello", "a", "b"]
    fast = encode_pairs(bpe, prompts, outputs, 512)
    assert fast[:2] == encode_pairs(bpe, prompts, outputs, 512, splice=False)[:2]
    assert fast[1] == [len(ids) for ids in _whole(bpe, prompts)]


@pytest.mark.slow
def test_smollm2_tokenizer_is_spliced_exactly(smollm_gguf, shared):
    from xllama.modeling import load_tokenizer

    tok = load_tokenizer(str(smollm_gguf))
    assert _splicer_for(tok, _fast_backend(tok)) is not None
    records = json.loads((shared / "data/instructions/alpaca-tiny/alpaca_tiny.json").read_text())
    rows = TRICKY + [(r["instruction"], r["input"], r["output"]) for r in records]
    prompts, outputs = _rows(rows)
    fast = encode_pairs(tok, prompts, outputs, 512)
    assert fast[:2] == encode_pairs(tok, prompts, outputs, 512, splice=False)[:2]
    assert fast[1] == [len(ids) for ids in _whole(tok, prompts)]
