"""Append-only JSONL stage caches: each batch is flushed and fsynced, so a crash loses at most the batch
in flight, and a line torn by the crash is ignored (with a warning) when the stage resumes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


def read_cache(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # the last line: torn by a crash mid-write
                log.warning("%s: ignoring a torn last line (a crash mid-write); it will be redone", path)
                _truncate_to_valid(path, lines[:i])
            else:
                raise ValueError(f"{path}:{i + 1}: corrupt cache line (not valid JSON)") from None
    return rows


def _truncate_to_valid(path: Path, good_lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(l + "\n" for l in good_lines if l.strip()), encoding="utf-8")
    os.replace(tmp, path)


def append_cache(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
