"""The batched generation engine: identical greedy outputs however it batches, order restored, per-sequence
stopping at the first line / EOS, and resuming an interrupted run from its cache.

The model is a tiny random Llama with a real byte-level BPE tokenizer trained on FLORES text; its newline and
EOS output rows are scaled up so that answers end in all three ways (newline, EOS, max_new_tokens).
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from xllama.eval import generate as G  # noqa: E402
from xllama.eval.generate import first_line, generate, plan_batches  # noqa: E402

MAX_NEW = 20


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def flores(shared):
    from xllama.data.evalsets import load_flores

    folder = str(shared / "data" / "eval" / "flores101" / "devtest")
    return load_flores(folder, "en"), load_flores(folder, "zh")


@pytest.fixture(scope="module")
def tokenizer(flores):
    from xllama.modeling import build_bpe_tokenizer

    en, zh = flores
    return build_bpe_tokenizer(en[:400] + zh[:400], vocab_size=1000)


@pytest.fixture(scope="module")
def model(tokenizer):
    from xllama.modeling import build_model_from_config

    model = build_model_from_config({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "num_key_value_heads": 2},
                                    vocab_size=len(tokenizer))
    newline = tokenizer.convert_tokens_to_ids("Ċ")  # byte-level BPE's "\n"
    with torch.no_grad():
        model.lm_head.weight[newline] *= 1.5
        model.lm_head.weight[tokenizer.eos_token_id] *= 1.5
    return model.eval()


@pytest.fixture(scope="module")
def prompts(flores):
    en, zh = flores
    return [f"Translate: {s}\n" for s in en[:14] + zh[:10]]


def reference(model, tokenizer, prompt, max_new_tokens=MAX_NEW, num_beams=1):
    """The plain way: one prompt, model.generate to EOS or max_new_tokens, first line cut afterwards."""
    ids = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                             eos_token_id=G.eos_token_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def raw(model, tokenizer, prompts):
    return [reference(model, tokenizer, p) for p in prompts]


def test_answers_end_in_every_way(raw, tokenizer):
    """The fixture model must exercise all stopping paths, or the tests below would prove little."""
    stopped_by_newline = [r for r in raw if "\n" in r.strip()]
    assert stopped_by_newline, "no answer has a second line"
    assert any("\n" not in r.strip() for r in raw)


def test_batched_sorted_greedy_equals_one_at_a_time(model, tokenizer, prompts, raw):
    batches = plan_batches([len(tokenizer(p)["input_ids"]) for p in prompts], MAX_NEW, batch_tokens=600)
    assert len(batches) > 2 and max(len(b) for b in batches) > 3  # really batched, several batches
    batched = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_tokens=600, progress=False)
    single = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=1, progress=False)
    assert batched == single
    assert batched == [first_line(r) for r in raw]
    assert all("\n" not in b for b in batched)


def test_order_is_restored(model, tokenizer, prompts):
    forward = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=5, progress=False)
    backward = generate(model, tokenizer, prompts[::-1], max_new_tokens=MAX_NEW, batch_size=5, progress=False)
    assert backward == forward[::-1]
    assert len(set(forward)) > len(forward) // 2  # distinct answers, so a permutation would show


def test_beam_search_batched_equals_single(model, tokenizer, prompts):
    # (Not compared with beam-to-EOS-then-cut: with first-line stopping a hypothesis ending in a newline is
    # complete and competes as such, which is the point, so the beams differ.)
    few = prompts[:6]
    batched = generate(model, tokenizer, few, max_new_tokens=12, num_beams=3, batch_size=6, progress=False)
    single = generate(model, tokenizer, few, max_new_tokens=12, num_beams=3, batch_size=1, progress=False)
    assert batched == single
    no_stop = generate(model, tokenizer, few, max_new_tokens=12, num_beams=3, batch_size=6, progress=False,
                       stop_at_newline=False)
    assert no_stop == [reference(model, tokenizer, p, 12, num_beams=3).strip() for p in few]


def test_generation_stops_when_every_sequence_is_done(model, tokenizer, prompts, raw):
    """Finished sequences must not keep the batch running: with a huge max_new_tokens the batch still ends
    after its longest first line (or EOS)."""
    done = [p for p, r in zip(prompts, raw) if "\n" in r.strip() or len(tokenizer(r)["input_ids"]) < MAX_NEW - 2]
    assert len(done) >= 3
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = generate(model, tokenizer, done, max_new_tokens=500, batch_size=len(done), progress=False)
    finally:
        hook.remove()
    assert len(calls) <= MAX_NEW + 1
    assert out == generate(model, tokenizer, done, max_new_tokens=MAX_NEW, batch_size=1, progress=False)


def test_first_line_stop_per_sequence(tokenizer):
    stop = G.FirstLineStop(tokenizer)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = ids("Question:")
    stop.prompt_length = len(prompt)
    rows = {
        "leading newline": (ids("\n"), False),
        "text": (ids(" a cat"), False),
        "text then newline": (ids(" a cat") + ids("\n"), True),
        "leading newline then text": (ids("\n") + ids("cat"), False),
    }
    width = max(len(r) for r, _ in rows.values())
    pad = tokenizer.pad_token_id
    batch = torch.tensor([prompt + r + [pad] * (width - len(r)) for r, _ in rows.values()])
    # evaluate each row at its own last real token
    for k, (name, (row, expected)) in enumerate(rows.items()):
        seq = batch[k: k + 1, : len(prompt) + len(row)]
        assert bool(stop(seq)[0]) is expected, name
    assert first_line("\n\n  ni hao \nsecond") == "ni hao"


def test_eos_ids_ignore_ordinary_tokens_in_config(model, tokenizer):
    # A random Llama config says eos_token_id=2, an ordinary BPE token here: it must not end answers.
    assert model.generation_config.eos_token_id == 2
    assert G.eos_token_ids(model, tokenizer) == [tokenizer.eos_token_id]


def test_plan_batches_respects_budget_and_covers_all():
    lengths = [5, 40, 12, 40, 7, 33, 2, 18]
    batches = plan_batches(lengths, max_new_tokens=10, batch_tokens=120)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * (max(lengths[i] for i in b) + 10) <= 120
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)
    assert all(len(b) <= 3 for b in plan_batches(lengths, 10, batch_size=3))


def test_interrupted_run_resumes_from_cache(model, tokenizer, prompts, tmp_path, monkeypatch):
    expected = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=4, progress=False)
    real = G._generate_batch
    calls = []

    def interrupted_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(G, "_generate_batch", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=4, progress=False, cache=tmp_path)
    (cache_file,) = tmp_path.glob("*.jsonl")
    lines = cache_file.read_text().splitlines()
    assert len(lines) == 1 + 2  # header + the two finished batches
    with open(cache_file, "a") as f:
        f.write('{"i": [0, 1], "out": ["half-writ')  # a crash in the middle of an append

    resumed = []

    def counting(*args, **kwargs):
        resumed.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(G, "_generate_batch", counting)
    out = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=4, progress=False, cache=tmp_path)
    assert out == expected
    assert sum(resumed) == len(prompts) - 8  # only the prompts not cached
    again = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=4, progress=False, cache=tmp_path)
    assert again == expected and sum(resumed) == len(prompts) - 8  # fully cached: nothing generated
    records = [json.loads(line) for line in cache_file.read_text().splitlines()]
    assert sorted(i for r in records[1:] for i in r["i"]) == list(range(len(prompts)))

    # other decoding settings are another cache entry, never a stale hit
    generate(model, tokenizer, prompts[:2], max_new_tokens=5, batch_size=4, progress=False, cache=tmp_path)
    assert len(list(tmp_path.glob("*.jsonl"))) == 2


def test_bad_arguments(model, tokenizer):
    from xllama.errors import XllamaError

    assert generate(model, tokenizer, [], max_new_tokens=4) == []
    with pytest.raises(XllamaError, match="max_new_tokens"):
        generate(model, tokenizer, ["x"], max_new_tokens=0)


def test_out_of_memory_halves_the_batch(model, tokenizer, prompts, monkeypatch):
    expected = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=1, progress=False)
    real = G._generate_batch
    sizes = []

    def small_gpu(*args, **kwargs):
        sizes.append(len(args[2]))
        if len(args[2]) > 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(G, "_generate_batch", small_gpu)
    out = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=len(prompts), progress=False)
    assert out == expected
    assert sizes[:3] == [24, 12, 6]  # halved on each out-of-memory error...
    assert set(sizes[3:]) == {3}  # ...then stayed at the size that fits
    assert sum(sizes[3:]) == len(prompts)
