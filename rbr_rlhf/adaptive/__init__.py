"""Data-adaptive safety rules for reward-model training (Li et al. 2025, "RAMO").

Each preference pair is labelled by the few rules of a rule pool on which its two responses differ most:
``pool`` (rule pools), ``scoring`` (Yes/No/Irrelevant rule scores from an LLM judge, prefix-shared and
cached), ``selection`` (top-k rules, labels, baselines), ``adapter`` (the Rule Adapter) and ``cli``
(``rbr-rlhf adaptive ...`` and the labelling options of ``rm train``). See docs/adaptive-rules.md.
"""

from .pool import Rule, RulePool, RulePoolError, load_pool

__all__ = ["Rule", "RulePool", "RulePoolError", "load_pool"]
