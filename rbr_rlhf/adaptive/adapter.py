"""The Rule Adapter: predicts, from the texts alone, which k rules a pair's responses differ on most.

Trained on pairs scored on the whole pool (targets: the multi-hot top-k of the adaptive selection), it
lets a new pair be labelled with 2k judge calls instead of 2 x pool size. Ours is deliberately small for
CPU: frozen MiniLM sentence embeddings of the conversation and of both responses, a symmetric feature
vector (conversation, |A - B|, A + B: the top-k set does not depend on which response is A), and a
one-hidden-layer MLP with one sigmoid output per rule (multi-label, binary cross-entropy).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .pool import RulePool
from .selection import PrefPair, SelectionConfig, select_rules, top_k


@dataclass
class AdapterConfig:
    k: int = 5
    encoder: str = "minilm"
    hidden: int = 256
    dropout: float = 0.2
    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-3
    seed: int = 0
    relevance_weight: float = 0.0   # the selection the targets come from


def _texts(pairs: Sequence[PrefPair]) -> tuple[list[str], list[str], list[str]]:
    from ..rm.text import render_dialogue

    return ([render_dialogue(list(p.conversation)) for p in pairs], [p.a for p in pairs], [p.b for p in pairs])


def pair_features(pairs: Sequence[PrefPair], encoder) -> np.ndarray:
    conv, a, b = _texts(pairs)
    e_c = encoder.encode(conv, truncation_side="left")  # the last turns matter most
    e_a, e_b = encoder.encode(a), encoder.encode(b)
    return np.concatenate([e_c, np.abs(e_a - e_b), e_a + e_b], axis=1).astype(np.float32)


def precision_at_k(predicted: Sequence[np.ndarray], true: Sequence[np.ndarray]) -> float:
    """Mean share of the predicted k rules that are in the true top-k."""
    if not predicted:
        return float("nan")
    return float(np.mean([len(set(map(int, p)) & set(map(int, t))) / max(len(p), 1) for p, t in zip(predicted, true)]))


def _mlp(n_in: int, cfg: AdapterConfig, n_out: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(n_in, cfg.hidden), torch.nn.ReLU(), torch.nn.Dropout(cfg.dropout),
                               torch.nn.Linear(cfg.hidden, n_out))


class RuleAdapter:
    def __init__(self, pool: RulePool, cfg: AdapterConfig, net, prior: np.ndarray, encoder=None):
        self.pool, self.cfg, self.net, self.prior = pool, cfg, net, prior
        self._encoder = encoder

    @property
    def encoder(self):
        if self._encoder is None:
            from ..encoders import MeanPoolEncoder

            self._encoder = MeanPoolEncoder(self.cfg.encoder)
        return self._encoder

    def logits(self, pairs: Sequence[PrefPair]) -> np.ndarray:
        import torch

        self.net.eval()
        with torch.inference_mode():
            return self.net(torch.from_numpy(pair_features(pairs, self.encoder))).numpy()

    def predict_top_k(self, pairs: Sequence[PrefPair], k: int | None = None) -> list[np.ndarray]:
        return [top_k(row, k or self.cfg.k) for row in self.logits(pairs)]

    def prior_top_k(self, k: int | None = None) -> np.ndarray:
        """The k rules most often in the training pairs' top-k: the baseline the adapter must beat."""
        return top_k(self.prior, k or self.cfg.k)

    def save(self, out: str | Path, info: dict) -> None:
        from safetensors.torch import save_file

        from ..data import write_json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(out / "adapter.safetensors"))
        write_json(out / "adapter.json", {"config": asdict(self.cfg), "pool": self.pool.name,
                                          "pool_fingerprint": self.pool.fingerprint, "rule_ids": self.pool.ids,
                                          "prior": self.prior.tolist(), **info})

    @classmethod
    def load(cls, path: str | Path, pool: RulePool) -> "RuleAdapter":
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "adapter.json").read_text())
        if meta["pool_fingerprint"] != pool.fingerprint:
            raise ValueError(f"rule adapter {path} was trained on pool {meta['pool']!r} "
                             f"({meta['pool_fingerprint']}), not on {pool.name!r} ({pool.fingerprint})")
        cfg = AdapterConfig(**meta["config"])
        state = load_file(str(path / "adapter.safetensors"))
        net = _mlp(state["0.weight"].shape[1], cfg, len(pool))
        net.load_state_dict(state)
        return cls(pool, cfg, net, np.asarray(meta["prior"]))


def train_adapter(pairs: Sequence[PrefPair], probs_a: np.ndarray, probs_b: np.ndarray, pool: RulePool,
                  cfg: AdapterConfig, out: str | Path | None = None, encoder=None) -> dict:
    """Fit on pairs scored on the whole pool ([N, R, 3] probabilities); save to ``out`` when given."""
    import torch

    if len(pairs) < 2:
        raise ValueError("the rule adapter needs at least 2 scored pairs")
    if probs_a.shape[1] != len(pool):
        raise ValueError(f"scores cover {probs_a.shape[1]} rules, the pool has {len(pool)}: score on the whole pool")
    sel = SelectionConfig(k=cfg.k, relevance_weight=cfg.relevance_weight)
    s_a, s_b = probs_a[..., 0] - probs_a[..., 1], probs_b[..., 0] - probs_b[..., 1]
    true = [select_rules(s_a[n], s_b[n], probs_a[n, :, 2], probs_b[n, :, 2], sel) for n in range(len(pairs))]
    y = np.zeros((len(pairs), len(pool)), dtype=np.float32)
    for n, idx in enumerate(true):
        y[n, idx] = 1.0
    prior = y.mean(0)
    if encoder is None:
        from ..encoders import MeanPoolEncoder

        encoder = MeanPoolEncoder(cfg.encoder)
    x = torch.from_numpy(pair_features(pairs, encoder))
    torch.manual_seed(cfg.seed)
    net = _mlp(x.shape[1], cfg, len(pool))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    target = torch.from_numpy(y)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(cfg.epochs):  # full batch: a few hundred pairs
        opt.zero_grad()
        loss = loss_fn(net(x), target)
        loss.backward()
        opt.step()
    adapter = RuleAdapter(pool, cfg, net, prior, encoder)
    predicted = adapter.predict_top_k(pairs)
    info = {"train_pairs": len(pairs), "final_loss": float(loss.item()), "train_precision": precision_at_k(predicted, true),
            "train_prior_precision": precision_at_k([adapter.prior_top_k()] * len(pairs), true)}
    if out is not None:
        adapter.save(out, info)
    return info
