"""``rbr-rlhf train``'s checks of everything the user wrote, before any model loads.

A run loads a policy, starts services and trains for minutes before it first reads some of its inputs
(the grader's training rows, the prompt files, the weights). Each of those is checked here first: the
rule set, the grader and weights it names (do they exist, were they fitted for this rule set), and every
row of the prompt and label files (file, row and key of each problem). Cheap: files and JSON only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..rules.rows import RowsError, check_rows

ROW_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".gz")


def _local_rows(key: str, source) -> tuple[str, list[dict]] | None:
    """Rows of a local row file named by a recipe key; None for a hub dataset name (checked when read)."""
    from ..data import read_rows

    path = Path(str(source)).expanduser()
    if not path.exists():
        if str(source).endswith(ROW_FILE_SUFFIXES) or str(source).startswith((".", "/", "~")):
            raise ValueError(f"{key}: file {source} does not exist")
        return None
    return str(path), read_rows(path)


def _rows(key: str, rules, source, **kw):
    found = _local_rows(key, source)
    if found is None:
        return None
    path, rows = found
    try:
        return check_rows(rules, rows, path, **kw)
    except RowsError as e:
        raise ValueError(f"{key}: {e}") from None


def _fingerprint(key: str, what: str, path: Path, field: str, rules) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{key}: {path} is not a readable {what} ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{key}: {path} is not a {what}")
    rules.check_fingerprint(data.get(field), f"{key}: {what} {path.parent if path.name != 'rbr_weights.json' else path}")


def preflight(cfg) -> list[str]:
    """Check a resolved recipe's inputs; raises ValueError (or FileNotFoundError) naming the recipe key
    and, for rows, the file, row and key. Returns warnings to print."""
    from ..rules import load_rules

    warnings: list[str] = []
    rules = load_rules(cfg.rbr.rules)  # a RuleSetError names the file, the YAML line and the key
    benign = [str(c) for c in cfg.rbr.benign_categories] + ["none", "benign"]

    # Prompt files: a conversation per row, and a category the rule set knows (or a benign one).
    for key, source in (("data.safety_prompts", cfg.data.safety_prompts), ("data.eval_prompts", cfg.data.eval_prompts)):
        if source:
            report = _rows(key, rules, source, completion=False, response_type="optional", no_safety=benign)
            plain = sum(rt is None for rt in report.response_types) if report else 0
            if plain:
                warnings.append(f"{key}: {plain} of {report.rows} prompts in {source} have no category of the rule "
                                "set (or a benign one): they are scored by the reward model alone")
    if cfg.data.benign_prompts:
        _rows("data.benign_prompts", rules, cfg.data.benign_prompts, completion=False, response_type="none")
    if cfg.data.xstest and not Path(str(cfg.data.xstest)).exists():
        raise ValueError(f"data.xstest: file {cfg.data.xstest} does not exist (data.xstest=null turns XSTest off)")

    # The helpful reward model.
    rm = cfg.reward_model.path
    if not (rm and (Path(rm) / "config.json").exists()) and not cfg.reward_model.build.data:
        raise ValueError(f"reward_model.path: {rm!r} is not a model directory and reward_model.build.data is not set")
    srm = cfg.safety_reward_model.path
    if srm and not (Path(srm) / "config.json").exists() and not cfg.safety_reward_model.build.data:
        raise ValueError(f"safety_reward_model.path: {srm!r} is not a model directory and "
                         "safety_reward_model.build.data is not set")

    if not cfg.rbr.enabled:
        return warnings
    spec = cfg.rbr.grader or ""
    if not spec and not cfg.rbr.service_url:
        raise ValueError("rbr.grader: no grader (set rbr.grader, or rbr.service_url, or rbr.enabled=false)")
    kind, _, gpath = spec.partition(":")
    build = cfg.rbr.build
    if kind == "classifier":
        config = Path(gpath) / "grader_config.json"
        if config.exists():
            _fingerprint("rbr.grader", "classifier grader", config, "rules_fingerprint", rules)
        elif not (build.grader.train or build.grader.real_data):
            raise ValueError(f"rbr.grader: {gpath} is not a classifier grader (no grader_config.json) and "
                             "rbr.build.grader is empty")
        elif not build.grader.train:
            raise ValueError("rbr.build.grader.train: the labelled rows to train the grader on are not set")
        else:
            _rows("rbr.build.grader.train", rules, build.grader.train, labels="required", label_scope="rule_set",
                  soft_labels=True)
    elif spec:
        if kind not in ("llm", "openai", "labels") and not Path(spec).is_dir():
            raise ValueError(f"rbr.grader: unknown grader spec {spec!r}: use classifier:DIR, llm:MODEL, "
                             "openai:MODEL@URL or labels")

    if cfg.rbr.weights:
        weights = Path(cfg.rbr.weights)
        if weights.is_dir():
            weights = weights / "rbr_weights.json"
        if weights.exists():
            _fingerprint("rbr.weights", "RBR weights", weights, "rules_fingerprint", rules)
        elif not build.weights.prompts:
            raise ValueError(f"rbr.weights: {cfg.rbr.weights} does not exist and rbr.build.weights.prompts is not set")
        else:
            _rows("rbr.build.weights.prompts", rules, build.weights.prompts, completion=False,
                  response_type="optional", no_safety=benign)
    elif not cfg.rbr.service_url:
        raise ValueError("rbr.weights: not set (the RBR needs fitted weights: `rbr-rlhf rbr fit` or `rbr-rlhf rbr build`)")
    return warnings


def run_preflight(cfg) -> None:
    for w in preflight(cfg):
        print(f"warning: {w}", file=sys.stderr, flush=True)
