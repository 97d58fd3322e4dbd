"""Seeds and stable splits from a hash: the same on every machine, run and Python (``hash()`` is salted).

``stable_hash(seed, step, "rollout")`` is the integer of the first hex digits of sha256("seed:step:rollout").
"""

from __future__ import annotations

import hashlib

_MAX8 = 0xFFFFFFFF


def stable_hash(*parts, digits: int = 8) -> int:
    return int(hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:digits], 16)


def stable_fraction(*parts) -> float:
    """A number in [0, 1] fixed by ``parts``: held-out splits that do not move between runs."""
    return stable_hash(*parts) / _MAX8
