"""``rbr-rlhf grader serve``: the batched RBR grader service."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import group

    p = group(sub, "grader", help="train, evaluate and serve proposition graders").add_parser("serve", help="serve RBR scores over HTTP with dynamic batching")
    p.add_argument("--rules", default="default")
    p.add_argument("--grader", required=True, help="classifier:DIR | llm:MODEL | openai:MODEL@URL")
    p.add_argument("--weights", help="fitted RBR weights; without them results carry no r_rbr")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback only by default)")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--token", default=os.environ.get("RBR_GRADER_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' (default: $RBR_GRADER_TOKEN)")
    p.add_argument("--max-batch-size", type=int, default=64, help="items per grader batch")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits to fill")
    p.add_argument("--max-request-items", type=int, default=1024)
    p.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024)
    p.set_defaults(handler=run)


def run(args) -> int:
    import uvicorn

    from ..grader.factory import build_grader
    from ..rbr.model import RBRWeights
    from ..rules import load_rules
    from .app import ServiceSettings, create_app
    from .server import bind_socket

    rules = load_rules(args.rules)
    weights = RBRWeights.load(args.weights, rules) if args.weights else None
    grader = build_grader(args.grader, rules)
    settings = ServiceSettings(args.max_batch_size, args.max_wait_ms, args.max_request_items, args.max_request_bytes, args.token)
    app = create_app(rules, grader, weights, settings, args.weights)
    # Bind first, then announce the address we really got: with --port 0 the kernel picks a free port and
    # GraderProcess reads it from this line (no race between "find a free port" and "bind it").
    sock = bind_socket(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"grader service for rule set {rules.name!r} ({rules.fingerprint}) on http://{host}:{sock.getsockname()[1]}",
          flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10)).run(sockets=[sock])
    finally:
        sock.close()
    return 0
