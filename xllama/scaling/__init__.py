"""Data-size scaling laws and budgeted parallel-data allocation (``xllama scaling``).

``laws``: read ``lang,size,score`` points, fit saturating power laws (per language, or jointly with a shared
exponent and a per-language similarity scale) and a log-linear baseline, and choose by held-out error; the
paper's exact equation was not available, so the data choose. ``allocate``: split a budget of pairs across
languages (weighted sum or maximin; exact for concave curves). ``plot``: PNG figures. ``cli``: the commands.

Nothing is imported here, so ``xllama --help`` does not pay for numpy and scipy.
"""
