"""The safety evaluator (``rbr-rlhf eval``): the paper's metrics by a judge independent of the training
reward, XSTest's string match beside it, bootstrap intervals. See ``evaluate.py`` and docs/evaluation.md.

Kept import-light (no torch): ``from rbr_rlhf.evaluation.strmatch import is_refusal`` costs nothing.
"""
