"""Run checkpoints: whole or ignored.

A checkpoint is written into ``checkpoints/.tmp-step-N`` and renamed to ``checkpoints/step-N`` only
after every file is written and a ``COMPLETE`` marker holding the manifest is in place; a directory
without the marker (a crash mid-write) is skipped with a warning when resuming. The last ``keep_last``
checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
MARKER = "COMPLETE"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def staging_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f".tmp-step-{step}"


def finalize(run_dir: Path, step: int, manifest: dict, keep_last: int) -> Path:
    """Mark a fully written staging directory complete and move it into place (atomic rename)."""
    tmp, final = staging_dir(run_dir, step), checkpoint_dir(run_dir) / f"step-{step}"
    with open(tmp / MARKER, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_complete(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_complete(run_dir: Path) -> list[Path]:
    """Whole checkpoints, oldest first; torn ones are reported and skipped."""
    root = checkpoint_dir(run_dir)
    if not root.exists():
        return []
    whole = []
    for d in root.iterdir():
        if not d.is_dir():
            continue
        if d.name.startswith(".tmp-") or not (d / MARKER).exists():
            log.warning("skipping torn checkpoint %s (no %s marker: a crash mid-write)", d, MARKER)
            continue
        whole.append(d)
    return sorted(whole, key=lambda d: int(d.name.split("-")[-1]))


def latest(run_dir: Path) -> Path | None:
    whole = list_complete(run_dir)
    return whole[-1] if whole else None


def read_manifest(ckpt: Path) -> dict:
    return json.loads((ckpt / MARKER).read_text())


# Identity keys added after checkpoints existed: a manifest without one was made with this value.
IDENTITY_DEFAULTS = {"advantage": "gae", "dev_prompts": 0}


def run_identity(rules, policy_path: str, reward_model_path: str | None, rbr_weights_fingerprint: str | None,
                 safety_reward_model_path: str | None, advantage: str = "gae", dev_prompts: int = 0) -> dict:
    """What a checkpoint was trained with (its manifest holds it; a resume must match it). ``advantage``
    decides whether the checkpoint holds a critic; ``dev_prompts`` which prompts the saved stream position
    indexes into."""
    return {"rules_fingerprint": rules.fingerprint, "policy": policy_path,
            "reward_model": reward_model_path, "rbr_weights": rbr_weights_fingerprint,
            "safety_reward_model": safety_reward_model_path, "advantage": advantage, "dev_prompts": dev_prompts}


def check_identity(ckpt: Path, identity: dict) -> None:
    """Refuse a checkpoint made with another rule set, policy, reward model or RBR weights than ``identity``."""
    manifest = read_manifest(ckpt)
    changed = sorted(k for k in identity if manifest.get(k, IDENTITY_DEFAULTS.get(k)) != identity[k])
    if changed:
        raise ValueError(f"checkpoint {ckpt} was made with a different {', '.join(changed)} "
                         f"({ {k: manifest.get(k) for k in changed} } vs now { {k: identity[k] for k in changed} }); "
                         "resume refused. Pass force_resume=true to resume anyway.")
