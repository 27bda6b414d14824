"""Packed rows isolate their examples on every attention path; the chunked loss equals the full-logits loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from xllama.errors import XllamaError
from xllama.train.attention import attention_kwargs, check_isolation, choose_attention, packed_forward
from xllama.train.loss import causal_lm_loss, token_logprobs

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=300, max_position_embeddings=256)
LENGTHS = [7, 12, 5, 9]


def tiny_model(attn: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY, initializer_range=0.1), attn_implementation=attn)
    return model.train()  # dropout is 0: train mode only matters for the paths that branch on it


def packed_row(lengths=LENGTHS, seed: int = 0) -> dict:
    """A packed row of random examples whose first 3 tokens are prompt (no label)."""
    g = torch.Generator().manual_seed(seed)
    ids, pos, labels = [], [], []
    for n in lengths:
        x = torch.randint(1, TINY["vocab_size"], (n,), generator=g)
        y = torch.full((n,), -100)
        y[:-1] = x[1:]
        y[:2] = -100
        ids.append(x), pos.append(torch.arange(n)), labels.append(y)
    return {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat(pos)[None],
            "labels": torch.cat(labels)[None], "seq_lengths": torch.tensor(lengths)}


def split(row: dict) -> list[dict]:
    out, start = [], 0
    for n in row["seq_lengths"].tolist():
        out.append({k: v[:, start:start + n] for k, v in row.items() if k != "seq_lengths"}
                   | {"seq_lengths": torch.tensor([n])})
        start += n
    return out


def grads(model) -> dict:
    g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return g


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_examples_give_the_losses_and_gradients_of_the_examples_alone(attn):
    model = tiny_model(attn)
    row = packed_row()
    logp = token_logprobs(model, row, chunk_tokens=8)
    bounds = torch.cumsum(torch.tensor([0] + LENGTHS), 0).tolist()
    packed = torch.stack([-logp[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
    packed.sum().backward()
    g_packed = grads(model)

    alone = torch.stack([causal_lm_loss(model, ex, chunk_tokens=8) for ex in split(row)])
    alone.sum().backward()
    g_alone = grads(model)

    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    assert g_packed.keys() == g_alone.keys() and len(g_packed) == len(list(model.parameters()))
    for name in g_packed:
        torch.testing.assert_close(g_packed[name], g_alone[name], rtol=1e-3, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_flex_attention_forward_isolates_packed_examples_on_cpu(monkeypatch):
    """FlexAttention's document-causal block mask, forward only (no flex backward on CPU). transformers compiles
    flex_attention, which inductor's CPU backend fails to build here; the uncompiled flex_attention computes the
    same function of the same BlockMask, so it is used (the compiled kernel and gradients are checked on a GPU)."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))
    model = tiny_model("flex_attention").eval()
    assert type(attention_kwargs("flex_attention", LENGTHS, "cpu")["attention_mask"]).__name__ == "BlockMask"
    row = packed_row()
    with torch.no_grad():
        packed = packed_forward(model, row["input_ids"], row["position_ids"], row["seq_lengths"]).logits[0]
        alone = torch.cat([packed_forward(model, ex["input_ids"], ex["position_ids"], ex["seq_lengths"]).logits[0]
                           for ex in split(row)])
        leaky = packed_forward(model, row["input_ids"], row["position_ids"], [sum(LENGTHS)]).logits[0]  # one sequence
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    assert (leaky - alone).abs().max() > 1e-2  # the test can tell a leak from isolation
    assert check_isolation(model.config, "flex_attention", "cpu") < 1e-4


@pytest.mark.parametrize("config_class", [LlamaConfig, Qwen2Config])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_start_up_self_check_passes_on_working_paths(config_class, attn):
    big = config_class(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=49152)
    assert check_isolation(big, attn, "cpu") < 1e-4


def test_start_up_self_check_stops_a_path_that_leaks_across_examples(monkeypatch):
    """Simulate the pre-4.54 behaviour: no explicit boundaries, and transformers' position-id masking disabled."""
    from transformers import masking_utils

    import xllama.train.attention as attention

    monkeypatch.setattr(attention, "attention_kwargs", lambda *a, **k: {})
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(XllamaError, match=r"isolation check failed on attention path 'sdpa'.*torch 2.*transformers"):
        check_isolation(LlamaConfig(**TINY), "sdpa", "cpu")


def test_attention_choice_and_explicit_masks():
    assert choose_attention("auto", use_cpu=True) == "sdpa"
    assert choose_attention("eager", use_cpu=True) == "eager"
    with pytest.raises(XllamaError, match="flash_attention_2 needs a CUDA GPU"):
        choose_attention("flash_attention_2", use_cpu=True)
    mask = attention_kwargs("sdpa", [2, 3], "cpu")["attention_mask"][0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])
    assert torch.equal(mask.long(), expected)
    eager = attention_kwargs("eager", [2, 3], "cpu")["attention_mask"][0, 0]
    assert torch.equal(eager == 0, expected.bool())
    flash = attention_kwargs("flash_attention_2", [2, 3], "cpu")
    assert flash["cu_seq_lens_q"].tolist() == [0, 2, 5] and flash["max_length_q"] == 3


# --- the chunked loss -------------------------------------------------------------------------------------------

def full_logits_loss(model, row):
    logits = packed_forward(model, row["input_ids"], row["position_ids"], row["seq_lengths"]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), row["labels"].flatten(), ignore_index=-100,
                           reduction="sum")


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_chunked_loss_equals_full_logits_loss_with_gradients(chunk):
    model = tiny_model("sdpa")
    row = packed_row()
    ref = full_logits_loss(model, row)
    (2.5 * ref).backward()  # a non-unit upstream gradient: the chunked backward must scale by it
    g_ref = grads(model)
    loss = causal_lm_loss(model, row, chunk_tokens=chunk)
    (2.5 * loss).backward()
    g = grads(model)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-3, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert "forward" not in vars(model.lm_head)  # the LM head is restored after the call


def test_chunked_loss_through_peft_lora_and_token_logprobs():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("sdpa"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                          lora_dropout=0.0))
    for name, p in model.named_parameters():  # LoRA B starts at 0: give the adapters a gradient path that matters
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    row = packed_row()
    ref = full_logits_loss(model, row)
    ref.backward()
    g_ref = grads(model)
    loss = causal_lm_loss(model, row, chunk_tokens=6)
    loss.backward()
    g = grads(model)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert g.keys() == g_ref.keys() and all("lora" in n for n in g)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-3, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    logp = token_logprobs(model, row, chunk_tokens=6)
    assert logp.shape == (sum(LENGTHS),) and (logp[row["labels"][0] == -100] == 0).all()
    torch.testing.assert_close(-logp.sum(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # about a minute of inductor compilation on a 2-core CPU
def test_compiled_decoder_layers_give_the_same_loss():
    from xllama.train.trainer import compile_layers

    model = tiny_model("sdpa").eval()
    row = packed_row()
    with torch.no_grad():
        ref = causal_lm_loss(model, row)
        assert compile_layers(model) == TINY["num_hidden_layers"]
        names = [n for n, _ in model.named_parameters()]
        loss = causal_lm_loss(model, row)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    assert names == [n for n, _ in tiny_model("sdpa").named_parameters()]  # checkpoints keep their keys
