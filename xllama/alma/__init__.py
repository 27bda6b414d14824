"""The ALMA recipe (Xu et al. 2023, "A Paradigm Shift in Machine Translation"): make an LLM a translator in two
stages on the x-LLaMA training engine.

- stage 1 (task ``alma-monolingual``): continue training on monolingual text of the languages, mixed by
  fixed ratios or temperature sampling, packed into fixed-length blocks, loss on every token, for a token budget;
- stage 2 (task ``alma-parallel``): fine-tune on a small set of high-quality sentence pairs, both directions,
  in ALMA's prompt, loss on the target and EOS only; full weights or LoRA, with the best checkpoint chosen by
  validation loss (:mod:`xllama.alma.stage2`).

:mod:`xllama.alma.data` is the data side the trainer calls; :mod:`xllama.alma.validate` computes the validation
loss; ``xllama translate`` (:mod:`xllama.translate`) uses the result.
"""
