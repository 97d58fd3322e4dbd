"""Runs inside every vLLM worker process (``--worker-extension-cls``): loads new policy weights.

vLLM calls ``rbr_load_weights(path)`` through ``collective_rpc`` with a *path*: tensors passed as RPC
arguments arrive mangled on CPU, and a file written once is read by every worker. Before loading, the
file is checked against the served checkpoint's tensor names and shapes; a bad file is refused and the
old weights keep serving (nothing is loaded until everything checks out). The method name
``update_weights`` belongs to vLLM, hence ``rbr_``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


def safetensors_header(path: str | Path) -> dict[str, list[int]]:
    """{tensor name: shape} read from a safetensors header, without loading the tensors."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def reference_shapes(model_dir: str | Path) -> dict[str, list[int]]:
    """Names and shapes of the checkpoint the server was started from (all its safetensors shards)."""
    shapes: dict[str, list[int]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        shapes.update(safetensors_header(f))
    return shapes


def check_weights(new: dict[str, list[int]], reference: dict[str, list[int]], tied: set[str] = frozenset()) -> list[str]:
    """Every problem with a new weight file, or [] when it matches the served checkpoint."""
    problems = []
    missing = sorted(set(reference) - set(new))
    unknown = sorted(set(new) - set(reference) - set(tied))
    wrong = sorted(k for k in set(new) & set(reference) if list(new[k]) != list(reference[k]))
    if missing:
        problems.append(f"missing tensors: {missing[:5]}{' …' if len(missing) > 5 else ''} ({len(missing)})")
    if unknown:
        problems.append(f"unknown tensors: {unknown[:5]}{' …' if len(unknown) > 5 else ''} ({len(unknown)})")
    for k in wrong[:5]:
        problems.append(f"wrong shape for {k}: {new[k]} (served model has {reference[k]})")
    return problems


class WeightSyncExtension:
    """Mixed into vLLM's worker class; ``self.model_runner`` is the worker's."""

    def rbr_load_weights(self, path: str) -> dict:
        from safetensors.torch import load_file

        try:
            model_dir = self.model_runner.model_config.model
            if not hasattr(self, "_rbr_reference"):
                self._rbr_reference = reference_shapes(model_dir)
            tied = {"lm_head.weight"} if getattr(self.model_runner.model_config.hf_config, "tie_word_embeddings", False) else set()
            problems = check_weights(safetensors_header(path), self._rbr_reference, tied)
            if problems:
                return {"ok": False, "error": f"weights in {path} refused: " + "; ".join(problems)}
            tensors = load_file(path)
        except Exception as e:  # noqa: BLE001 - reported to the trainer, the server keeps serving
            return {"ok": False, "error": f"cannot read {path}: {type(e).__name__}: {e}"}
        # reload_weights, not model.load_weights: after start-up, backends re-pack weights (the CPU one for
        # oneDNN), leaving the original parameters empty; vLLM's in-place reload redoes that processing.
        self.model_runner.reload_weights(weights_iterator=iter(tensors.items()))
        return {"ok": True, "tensors": len(tensors)}
