"""The RBR grader service.

    POST /v1/score   {"items": [{"conversation", "completion", "response_type" | "category"}, ...]}
                  -> {"results": [{response_type, rbr_applies, proposition_probs, class_probs, top_class, r_rbr}]}
    GET  /healthz    liveness
    GET  /metrics    Prometheus: requests, items, batch sizes, latency, errors
    GET  /v1/info    rule set (name, fingerprint), grader, weights

Validation is ours, not FastAPI's, so every 4xx names the field and the reason in one flat message.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ..grader.base import GradeItem
from ..rbr.features import grade_completions
from ..rules.ruleset import RuleSet
from .batcher import DynamicBatcher

log = logging.getLogger(__name__)


@dataclass
class ServiceSettings:
    max_batch_size: int = 64
    max_wait_ms: float = 10.0
    max_request_items: int = 1024
    max_request_bytes: int = 8 * 1024 * 1024
    token: str | None = None


class BadRequest(Exception):
    def __init__(self, status: int, field: str, reason: str):
        self.status, self.field, self.reason = status, field, reason


def _validate_item(rules: RuleSet, i: int, item) -> dict:
    where = f"items[{i}]"
    if not isinstance(item, dict):
        raise BadRequest(422, where, "must be an object with conversation, completion and response_type or category")
    conv = item.get("conversation")
    if conv is None:
        raise BadRequest(422, f"{where}.conversation", "missing")
    if isinstance(conv, str):
        conv = [{"role": "user", "content": conv}]
    elif isinstance(conv, list) and conv:
        for j, m in enumerate(conv):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role", "user"), str):
                raise BadRequest(422, f"{where}.conversation[{j}]", "must be an object with string 'role' and 'content'")
    else:
        raise BadRequest(422, f"{where}.conversation", "must be a non-empty string or list of messages")
    if "completion" not in item:
        raise BadRequest(422, f"{where}.completion", "missing")
    if not isinstance(item["completion"], str):
        raise BadRequest(422, f"{where}.completion", f"must be a string, got {type(item['completion']).__name__}")
    if "response_type" not in item and "category" not in item:
        raise BadRequest(422, f"{where}.response_type", "missing: give a response_type or a category (null for none)")
    key_name = "response_type" if "response_type" in item else "category"
    key = item[key_name]
    rt = None
    if key is not None:
        if not isinstance(key, str):
            raise BadRequest(422, f"{where}.{key_name}", f"must be a string or null, got {type(key).__name__}")
        found = rules.find_response_type(key)
        if found is None:
            raise BadRequest(422, f"{where}.{key_name}", f"unknown {key_name.replace('_', ' ')} {key!r}; known response types "
                             f"{sorted(rules.response_types)}, categories {sorted(rules.behavior_policy)}")
        rt = found.name
    return {"item": GradeItem(tuple({"role": m.get("role", "user"), "content": m["content"]} for m in conv), item["completion"]),
            "response_type": rt}


def create_app(rules: RuleSet, grader, weights=None, settings: ServiceSettings | None = None,
               weights_path: str | None = None) -> FastAPI:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    settings = settings or ServiceSettings()
    registry = CollectorRegistry()
    requests_total = Counter("rbr_grader_requests", "HTTP score requests by status", ["status"], registry=registry)
    items_total = Counter("rbr_grader_items", "items scored", registry=registry)
    errors_total = Counter("rbr_grader_errors", "errors by kind", ["kind"], registry=registry)
    batch_sizes = Histogram("rbr_grader_batch_size", "items per grader batch", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
    batch_seconds = Histogram("rbr_grader_batch_seconds", "grader time per batch", registry=registry)
    latency = Histogram("rbr_grader_request_seconds", "request latency", registry=registry)

    def score_batch(entries: list[dict]) -> list[dict]:
        out: list[dict | None] = [None] * len(entries)
        graded_idx = [i for i, e in enumerate(entries) if e["response_type"] is not None]
        graded = grade_completions(rules, grader, [entries[i]["item"] for i in graded_idx],
                                   [entries[i]["response_type"] for i in graded_idx]) if graded_idx else []
        for i, g in zip(graded_idx, graded):
            out[i] = {"response_type": g.response_type, "rbr_applies": True, "proposition_probs": g.proposition_probs,
                      "class_probs": g.class_probs, "top_class": g.top_class,
                      "r_rbr": weights.reward(rules, g) if weights is not None else None}
        for i, e in enumerate(entries):
            if out[i] is None:
                out[i] = {"response_type": None, "rbr_applies": False, "r_rbr": None,
                          "note": "no safety response type: no RBR term"}
        return out

    def on_batch(n: int, seconds: float) -> None:
        batch_sizes.observe(n)
        batch_seconds.observe(seconds)

    batcher = DynamicBatcher(score_batch, settings.max_batch_size, settings.max_wait_ms, on_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="rbr-rlhf grader service", lifespan=lifespan)
    app.state.batcher = batcher

    def error(status: int, field: str, reason: str) -> JSONResponse:
        errors_total.labels(kind=str(status)).inc()
        requests_total.labels(status=str(status)).inc()
        return JSONResponse({"error": {"field": field, "reason": reason}, "detail": f"{field}: {reason}"}, status_code=status)

    def authorized(request: Request) -> bool:
        if not settings.token:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode())

    @app.post("/v1/score")
    async def score(request: Request):
        start = time.monotonic()
        if not authorized(request):
            return error(401, "authorization", "missing or wrong bearer token")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_request_bytes:
            return error(413, "body", f"request of {declared} bytes exceeds the limit of {settings.max_request_bytes}")
        raw = await request.body()
        if len(raw) > settings.max_request_bytes:
            return error(413, "body", f"request of {len(raw)} bytes exceeds the limit of {settings.max_request_bytes}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return error(400, "body", f"not valid UTF-8 (byte {e.start})")
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            return error(400, "body", f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}")
        if not isinstance(body, dict) or "items" not in body:
            return error(422, "items", "missing: the body must be an object {\"items\": [...]}")
        items = body["items"]
        if not isinstance(items, list):
            return error(422, "items", f"must be a list, got {type(items).__name__}")
        if not items:
            return error(422, "items", "empty batch")
        if len(items) > settings.max_request_items:
            return error(413, "items", f"{len(items)} items exceed the limit of {settings.max_request_items} per request")
        try:
            entries = [_validate_item(rules, i, it) for i, it in enumerate(items)]
        except BadRequest as e:
            return error(e.status, e.field, e.reason)
        try:
            results = await app.state.batcher.submit(entries)
        except Exception as e:  # noqa: BLE001 - a grader failure is a 503, never a silent zero reward
            log.exception("grader backend failed")
            return error(503, "grader", f"grader backend failed: {type(e).__name__}: {e}")
        items_total.inc(len(results))
        requests_total.labels(status="200").inc()
        latency.observe(time.monotonic() - start)
        return {"results": results, "rules_fingerprint": rules.fingerprint}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/info")
    async def info(request: Request):
        if not authorized(request):
            return error(401, "authorization", "missing or wrong bearer token")
        return {"rules": {"name": rules.name, "fingerprint": rules.fingerprint, "source": rules.source,
                          "response_types": list(rules.response_types), "categories": list(rules.behavior_policy)},
                "grader": grader.describe(),
                "weights": None if weights is None else {"path": weights_path, "rules_fingerprint": weights.rules_fingerprint,
                                                         "reward_model": weights.reward_model},
                "batching": {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms}}

    return app
