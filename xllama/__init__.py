"""xllama: extend an English-centric LLM to other languages.

Pipeline, one sub-package per stage: ``data`` (sources -> CoIT/MuIT mix) -> ``train`` (instruction tuning)
-> ``eval`` (FLORES/WMT translation, XQuAD/MLQA) -> ``scaling`` (data-size laws and budget allocation),
plus ``align`` (cross-lingual representation analysis) and ``alma`` (the ALMA translation recipe).
"""

__version__ = "0.1.0"
