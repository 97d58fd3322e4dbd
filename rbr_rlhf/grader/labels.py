"""The label oracle: human (or precomputed) proposition labels as probabilities."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from .base import GradeItem, GraderError


class LabelGrader:
    """Reads ``propositions`` from items registered with ``add``; used for fits on labelled data."""

    name = "labels"

    def __init__(self) -> None:
        self._labels: dict[str, dict] = {}

    @staticmethod
    def _key(item: GradeItem) -> str:
        return json.dumps([list(item.conversation), item.completion], sort_keys=True)

    def add(self, item: GradeItem, labels: dict) -> None:
        self._labels[self._key(item)] = labels

    def grade(self, items: Sequence[GradeItem], propositions: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(items), len(propositions)))
        for i, item in enumerate(items):
            labels = self._labels.get(self._key(item))
            if labels is None:
                raise GraderError("the labels grader needs rows that carry 'propositions' labels")
            for j, p in enumerate(propositions):
                if p not in labels:
                    raise GraderError(f"row has no label for proposition {p!r}")
                out[i, j] = float(labels[p])
        return out

    def describe(self) -> dict:
        return {"kind": "labels"}
