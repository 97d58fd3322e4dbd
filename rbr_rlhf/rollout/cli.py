"""``rbr-rlhf rollout serve``: run the vLLM rollout server in the foreground."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import group

    p = group(sub, "rollout", help="the vLLM rollout server").add_parser("serve", help="serve the policy with vLLM (generation + weight sync)")
    p.add_argument("--model", default="smollm2", help="built-in alias, local directory or hub name")
    p.add_argument("--host", default="127.0.0.1", help="bind address (keep it loopback: weight routes are open)")
    p.add_argument("--port", type=int, default=8800)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-gib", type=int, default=2, help="CPU KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    p.add_argument("--api-key", help="require this bearer token on the OpenAI routes")
    p.add_argument("--weight-transfer", choices=["nccl"], help="enable vLLM's NCCL weight transfer (GPU)")
    p.add_argument("--no-enforce-eager", action="store_true", help="let vLLM compile (slow start on CPU)")
    p.add_argument("--log", help="server log file (default: a temporary file)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import time

    from .vllm_server import VLLMServer

    server = VLLMServer(args.model, host=args.host, port=args.port, dtype=args.dtype, max_model_len=args.max_model_len,
                        api_key=args.api_key, kv_cache_gib=args.kv_cache_gib, enforce_eager=not args.no_enforce_eager,
                        weight_transfer=args.weight_transfer, log_path=args.log)
    print(f"starting vLLM for {server.model} on {server.url} (log: {server.log_path})", flush=True)
    with server:
        print(f"rollout server ready on {server.url}", flush=True)
        try:
            while server.alive():
                time.sleep(1.0)
        except KeyboardInterrupt:
            return 0
        print(f"rollout server died; its log ends with:\n{server.log_tail()}")
    return 1
