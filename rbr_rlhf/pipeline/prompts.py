"""Prompt sets: any ``datasets``-loadable source (JSONL, Parquet, CSV, or a hub name with network).

A row needs a conversation (``conversation``/``prompt``/``messages``: a string or a list of messages
ending with a user turn) and may carry a ``category``. Rows get a stable ``prompt_id``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def _conversation(row: dict, i: int, source: str) -> list[dict]:
    conv = row.get("conversation", row.get("prompt", row.get("messages")))
    if isinstance(conv, str):
        conv = [{"role": "user", "content": conv}]
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"{source}: row {i}: needs a 'conversation' (or 'prompt'/'messages'): a string or a message list")
    if conv[-1].get("role") == "assistant":
        conv = conv[:-1]  # a chat dataset row: its last assistant turn is what we will generate
    return [{"role": m.get("role", "user"), "content": m["content"]} for m in conv]


def load_prompt_set(source: str, limit: int | None = None, split: str = "train") -> list[dict]:
    import datasets

    path = Path(source)
    if path.exists():
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".gz": "json"}.get(path.suffix)
        if kind is None:
            raise ValueError(f"{source}: unsupported prompt file type {path.suffix!r} (JSONL, JSON, Parquet, CSV)")
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    else:
        ds = datasets.load_dataset(source, split=split)  # a hub dataset, where there is network
    rows = []
    for i, row in enumerate(ds, 1):
        if limit is not None and len(rows) >= limit:
            break
        conv = _conversation(row, i, source)
        pid = row.get("prompt_id") or row.get("id") or hashlib.sha256(json.dumps(conv, sort_keys=True).encode()).hexdigest()[:16]
        cat = row.get("category")
        rows.append({"prompt_id": str(pid), "conversation": conv, "category": None if cat is None else str(cat),
                     "category_source": "dataset" if cat is not None else None})
    return rows


def balanced(rows: list[dict], limit: int | None, key: str = "response_type") -> list[dict]:
    """At most ``limit`` rows, taken round-robin across ``key`` (in file order within each), so a small
    build or evaluation still covers every response type the set has."""
    if limit is None or limit >= len(rows):
        return rows
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    out, queues = [], [list(g) for _, g in sorted(groups.items())]
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out
