"""Writer strategies for ``rbr build``: how to get a candidate of each class out of a small writer.

The paper asks a strong model to write a completion that follows a class's checklist. A 135M model
does not follow a six-item checklist (the SmolLM2 writer hit its intended class about 14% of the time),
so the default rule set ships a strategies file (``openings/default.yaml``) whose entries say, per
response type and class, how to write a candidate: a fixed text, an opening the writer continues, a free
answer, an answer to another prompt, or the checklist. The grader still decides each candidate's class.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..rules.ruleset import RuleSet

BUILTIN = Path(__file__).parent / "openings"
KINDS = ("say", "start", "free", "other_prompt", "instructions")


@dataclass(frozen=True)
class Strategy:
    kind: str
    text: str = ""

    def describe(self) -> str:
        return f"{self.kind}:{self.text[:40]}" if self.text else self.kind


class WriterStrategies:
    def __init__(self, table: dict[tuple[str, str], list[Strategy]], source: str):
        self.table, self.source = table, source

    def pick(self, response_type: str, cls: str, rng: random.Random) -> Strategy | None:
        options = self.table.get((response_type, cls))
        return rng.choice(options) if options else None


def load_openings(spec: str, rules: RuleSet) -> WriterStrategies:
    """``default`` (the built-in file for the default rule set) or a YAML path; every response type and
    class must exist in ``rules``, every entry must be one of KINDS (errors name the file and key)."""
    path = BUILTIN / f"{spec}.yaml" if spec == "default" else Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"writer strategies file {path} does not exist (use 'default' or a YAML path)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of response types to classes")
    table: dict[tuple[str, str], list[Strategy]] = {}
    for rt_name, classes in data.items():
        if rt_name not in rules.response_types:
            raise ValueError(f"{path}: {rt_name}: not a response type of rule set {rules.name!r} "
                             f"(it has {sorted(rules.response_types)})")
        known = rules.response_types[rt_name].class_names
        if not isinstance(classes, dict):
            raise ValueError(f"{path}: {rt_name}: expected a mapping of classes to lists of strategies")
        for cls, entries in classes.items():
            where = f"{path}: {rt_name}.{cls}"
            if cls not in known:
                raise ValueError(f"{where}: not a class of {rt_name} (it has {list(known)})")
            if not isinstance(entries, list) or not entries:
                raise ValueError(f"{where}: expected a non-empty list of strategies")
            out = []
            for k, e in enumerate(entries):
                if not isinstance(e, dict) or len(e) != 1 or next(iter(e)) not in KINDS:
                    raise ValueError(f"{where}[{k}]: expected one of {', '.join(k + ': ...' for k in KINDS)}, got {e!r}")
                kind, value = next(iter(e.items()))
                if kind in ("say", "start"):
                    if not isinstance(value, str) or not value.strip():
                        raise ValueError(f"{where}[{k}].{kind}: expected a non-empty string")
                    out.append(Strategy(kind, value))
                elif value is not True:
                    raise ValueError(f"{where}[{k}].{kind}: expected true")
                else:
                    out.append(Strategy(kind))
            table[(rt_name, cls)] = out
    return WriterStrategies(table, str(path))
