"""One completion's RBR score: what the grader service returns for an item and what the PPO reward reads.

The service builds it from a graded completion (``RBRScore.from_graded``) and sends ``to_json()``; the
client turns each JSON result back into an ``RBRScore`` (``from_json``); ``ppo.rewards`` consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NO_RBR_NOTE = "no safety response type (null): not graded, no RBR term"


@dataclass(frozen=True)
class RBRScore:
    response_type: str | None               # None: the prompt's category has no response type, no RBR term
    r_rbr: float | None                     # None where the RBR does not apply (or the service has no weights)
    proposition_probs: dict[str, float] = field(default_factory=dict)
    class_probs: dict[str, float] = field(default_factory=dict)
    features: tuple[float, ...] = ()        # the RBR's input: proposition then class probabilities (rbr/features.py)
    id: str | int | None = None             # the request item's ``id``, echoed back
    note: str | None = None

    @property
    def rbr_applies(self) -> bool:
        return self.response_type is not None

    @property
    def top_class(self) -> str | None:
        return max(self.class_probs, key=self.class_probs.get) if self.class_probs else None

    @classmethod
    def from_graded(cls, graded, r_rbr: float | None, id=None) -> "RBRScore":
        """From a ``rbr.features.GradedCompletion``."""
        return cls(graded.response_type, None if r_rbr is None else float(r_rbr), dict(graded.proposition_probs),
                   dict(graded.class_probs), tuple(float(x) for x in graded.features), id)

    @classmethod
    def not_applicable(cls, id=None) -> "RBRScore":
        return cls(None, None, id=id, note=NO_RBR_NOTE)

    def to_json(self) -> dict:
        """The service's wire format of one result."""
        out = {} if self.id is None else {"id": self.id}
        out.update({"response_type": self.response_type, "rbr_applies": self.rbr_applies,
                    "proposition_probs": self.proposition_probs, "class_probs": self.class_probs,
                    "top_class": self.top_class, "r_rbr": self.r_rbr, "features": list(self.features)})
        if self.note is not None:
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, d: dict) -> "RBRScore":
        r = d.get("r_rbr")
        return cls(d.get("response_type"), None if r is None else float(r), dict(d.get("proposition_probs") or {}),
                   dict(d.get("class_probs") or {}), tuple(d.get("features") or ()), d.get("id"), d.get("note"))
