"""The vLLM rollout server: a real ``vllm serve`` process, and the trainer-side engine that talks to it.

``VLLMServer`` starts ``python -m vllm.entrypoints.openai.api_server`` for the policy with

* ``VLLM_SERVER_DEV_MODE=1``: vLLM's RL routes (``/pause``, ``/resume``, ``/collective_rpc``,
  ``/update_weight_version``, ``/weight_info``, and the NCCL weight-transfer routes);
* ``--worker-extension-cls rbr_rlhf.rollout.worker_extension.WeightSyncExtension``: the CPU weight loader.

Those routes let anyone who reaches the port reload weights, so the server binds 127.0.0.1 unless told
otherwise; put it on a trusted network only, and set an API key for the OpenAI routes.

``VLLMEngine`` is the client: generation through ``/v1/completions`` on client-tokenized prompts (with
``return_token_ids`` and per-token logprobs), and weight sync:

    pause (mode=wait: in-flight requests finish on the old weights, new ones wait)
      -> transport new weights (CPU: a safetensors file + collective_rpc; GPU: NCCL broadcast)
      -> bump the weight version -> resume

so no request ever sees half-updated weights, and every request after ``update_weights`` returns sees
the new ones.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Sequence

import httpx
import torch

from ..procs import ChildProcess, free_port
from .types import Generation, WeightSyncError, chat_prompt_ids

log = logging.getLogger(__name__)
EXTENSION = "rbr_rlhf.rollout.worker_extension.WeightSyncExtension"
SYNC_FILE, SYNC_TMP = "policy.safetensors", ".policy.safetensors.tmp"  # FileWeightTransport's files


class ServerError(RuntimeError):
    """The server could not start, or died; carries the tail of its own log."""


def _cpu_binding(env: dict[str, str]) -> dict[str, str]:
    """Bind vLLM's CPU engine to every core this process may use (one rank; a user's own settings win).

    By default vLLM's CPU backend reserves one core per rank for its scheduler process and binds the
    compute threads to the others. On a small machine that is half the compute: on 2 cores the engine ran
    on one (its log: ``core ids=[0]``), and generated 138.8 tokens/s in fp32 against 169.6 on both, and
    1.61x against 2.62x transformers in bf16 (benchmarks/bench_rollout.py). The scheduler process used about
    a tenth of the CPU time the compute worker did in that benchmark.
    On a GPU platform vLLM ignores both variables.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in env or "VLLM_CPU_NUM_OF_RESERVED_CPU" in env:
        return {}
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return {"VLLM_CPU_OMP_THREADS_BIND": cpus, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


class VLLMServer(ChildProcess):
    """Lifecycle of one ``vllm serve`` process: start, wait for readiness, report its errors, stop."""

    what, error = "the vLLM server", ServerError

    def __init__(self, model: str, host: str = "127.0.0.1", port: int | None = None, dtype: str = "float32",
                 max_model_len: int = 2048, api_key: str | None = None, kv_cache_gib: int = 2,
                 enforce_eager: bool = True, weight_transfer: str | None = None, log_path: str | None = None,
                 extra_args: Sequence[str] = (), served_name: str = "policy", max_num_seqs: int = 32):
        from ..models import resolve_model

        self.model = resolve_model(model)
        self.host, self.port = host, port or free_port(host)
        self.api_key, self.served_name = api_key, served_name
        self.log_path = Path(log_path) if log_path else None  # None: a temporary file
        self.cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                    "--served-model-name", served_name, "--host", host, "--port", str(self.port), "--dtype", dtype,
                    "--max-model-len", str(max_model_len), "--worker-extension-cls", EXTENSION,
                    "--disable-log-stats", "--seed", "0",
                    # Per-request seeds (reproducible rollouts, exact resume) crash vLLM's CPU sampler when a
                    # prefill is chunked ("CPU Generator does not use offset"): never chunk prefills.
                    "--no-enable-chunked-prefill", "--max-num-seqs", str(max_num_seqs),
                    "--max-num-batched-tokens", str(max_num_seqs * max_model_len), *extra_args]
        if enforce_eager:
            self.cmd.append("--enforce-eager")  # on CPU, torch.compile would add minutes to start-up
        if api_key:
            self.cmd += ["--api-key", api_key]
        if weight_transfer:
            self.cmd += ["--weight-transfer-config", f'{{"backend": "{weight_transfer}"}}']
        self.env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
                    "PYTHONUNBUFFERED": "1"}
        if not any(a.startswith(("--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp")) for a in extra_args):
            self.env.update(_cpu_binding(self.env))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 600.0) -> "VLLMServer":
        self._spawn()

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        self._wait_ready(ready, timeout, interval=1.0)
        return self


class VLLMEngine:
    """The trainer-side client of a rollout server (a ``RolloutEngine``)."""

    def __init__(self, url: str, tokenizer_path: str, model_name: str = "policy", api_key: str | None = None,
                 timeout: float = 600.0, transport: "WeightTransport | None" = None, sync_dir: str | None = None):
        from transformers import AutoTokenizer

        self.url = url.rstrip("/")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.model_name = model_name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout, headers=headers)
        self.transport = transport or FileWeightTransport(sync_dir)
        self.weight_version = self.server_weight_version() or 0

    # ---------------------------------------------------------------- generation
    def generate(self, conversations: Sequence[list[dict]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_tokens: int = 64, seed: int | None = None, stop: Sequence[str] | None = None) -> list[Generation]:
        prompts = [chat_prompt_ids(self.tokenizer, c) for c in conversations]
        body = {"model": self.model_name, "prompt": prompts, "n": n, "temperature": temperature, "top_p": top_p,
                "max_tokens": max_tokens, "logprobs": 0, "return_token_ids": True, "skip_special_tokens": True}
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        resp = self._post("/v1/completions", body)
        out = []
        for ch in sorted(resp["choices"], key=lambda c: c["index"]):
            i = ch["index"] // n
            lps = (ch.get("logprobs") or {}).get("token_logprobs") or []
            out.append(Generation(i, prompts[i], list(ch.get("token_ids") or []), [float(x) for x in lps], ch["text"],
                                  ch.get("finish_reason"), self.weight_version))
        return out

    def _post(self, path: str, body: dict | None = None, params: dict | None = None) -> dict:
        try:
            r = self.http.post(self.url + path, json=body, params=params)
        except httpx.TransportError as e:
            raise ServerError(f"rollout server {self.url} unreachable: {e}") from e
        if r.status_code >= 400:
            raise ServerError(f"rollout server {self.url}{path} answered {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else {}

    # ---------------------------------------------------------------- weights
    def server_weight_version(self) -> int | None:
        try:
            v = self.http.get(self.url + "/weight_info").json().get("weight_version")
            return int(v) if v is not None else None
        except (httpx.HTTPError, ValueError):
            return None

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> int:
        """Pause, transfer, bump the version, resume. On refusal the old weights keep serving."""
        self._post("/pause", params={"mode": "wait"})
        try:
            self.transport.send(self, state_dict)
            version = self.weight_version + 1
            self._post("/update_weight_version", {"new_version": str(version)})
            self.weight_version = version
        finally:
            self._post("/resume")
        return self.weight_version

    def close(self) -> None:
        self.http.close()
        self.transport.close()


class WeightTransport:
    def send(self, engine: VLLMEngine, state_dict: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the transport holds (files, process groups); nothing by default."""


class FileWeightTransport(WeightTransport):
    """CPU (and any shared-filesystem) path: write safetensors atomically, have every worker load it."""

    def __init__(self, sync_dir: str | None = None):
        # With no directory given the server is on this host: write to RAM (/dev/shm, a tmpfs) where there
        # is one, so a push never waits on disk write-back; a server on another host needs a shared path.
        self.owns_dir = sync_dir is None
        self.dir = Path(sync_dir or tempfile.mkdtemp(prefix="rbr-weight-sync-", dir=_ram_dir()))
        self.dir.mkdir(parents=True, exist_ok=True)
        # Runs on close(), when the transport is collected, or at interpreter exit, whichever comes
        # first: a forgotten close() must not leave hundreds of MB in /dev/shm (RAM) behind.
        self._cleanup = weakref.finalize(self, _remove_sync_files, self.dir, self.owns_dir)

    def write(self, state_dict: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        path, tmp = self.dir / SYNC_FILE, self.dir / SYNC_TMP
        # safetensors refuses tensors that share storage (tied embeddings): give each its own.
        shared = _shared_ptrs(state_dict)
        save_file({k: (v.detach().clone() if v.data_ptr() in shared else v.detach()).contiguous()
                   for k, v in state_dict.items()}, str(tmp))
        os.replace(tmp, path)
        return path

    def send(self, engine: VLLMEngine, state_dict: dict[str, torch.Tensor]) -> None:
        if not isinstance(state_dict, dict):  # a (name, tensor) source, e.g. weight_sync.MergedWeights
            state_dict = {k: v.detach().cpu() for k, v in state_dict}
        self.send_file(engine, self.write(state_dict))

    def close(self) -> None:
        """Remove the last weight file (hundreds of MB, in RAM when under /dev/shm)."""
        self._cleanup()

    def send_file(self, engine: VLLMEngine, path: Path) -> None:
        results = engine._post("/collective_rpc", {"method": "rbr_load_weights", "args": [str(path)]}).get("results", [])
        errors = [r.get("error") for r in results if isinstance(r, dict) and not r.get("ok")]
        if errors or not results:
            raise WeightSyncError(errors[0] if errors else f"no worker answered the weight load: {results}")


def _remove_sync_files(directory: Path, owns_dir: bool) -> None:
    for name in (SYNC_FILE, SYNC_TMP):
        (directory / name).unlink(missing_ok=True)
    if owns_dir:
        try:
            directory.rmdir()
        except OSError:
            pass  # not empty: someone else's files, leave them


def _ram_dir() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _shared_ptrs(state_dict) -> set[int]:
    seen, shared = set(), set()
    for v in state_dict.values():
        p = v.data_ptr()
        (shared if p in seen else seen).add(p)
    return shared
