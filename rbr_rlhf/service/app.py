"""The RBR grader service: a FastAPI app over a rule set, a grader backend and (optionally) RBR weights.

    POST /v1/score   {"items": [{"conversation", "completion", "response_type" | "category", "id"?}, ...]}
                  -> {"results": [{id?, response_type, rbr_applies, proposition_probs, class_probs,
                                   top_class, r_rbr}, ...], "rules_fingerprint": ...}
    GET  /healthz    liveness (no auth)
    GET  /metrics    Prometheus text: requests, items, batch sizes, latency, errors, queue (no auth)
    GET  /v1/info    rule set (name, fingerprint), grader, weights, limits

Validation is ours, not FastAPI's: every 4xx body is ``{"error": {"field", "reason"}, "detail"}`` naming
one field (``items[3].conversation[0].content``) and what is wrong with it. A grader failure is a 503
with the reason, for every request whose items were in the failed batch: never a zero reward.

An item without a safety response type sends ``"category": null`` (or ``"response_type": null``): it is
not graded and its result says ``"rbr_applies": false, "r_rbr": null``. A category or response type the
rule set does not know is a 422, not "no RBR": a typo must not silently drop the safety reward.
Categories the rule set maps (its ``behavior_policy``, e.g. ``None`` -> ``comply``) are graded.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ..grader.base import GradeItem, GraderError
from ..rbr.features import grade_completions
from ..rbr.score import RBRScore
from ..rules.ruleset import RuleSet
from .batcher import BatcherClosed, DynamicBatcher

log = logging.getLogger(__name__)


@dataclass
class ServiceSettings:
    max_batch_size: int = 64  # items per grader call
    max_wait_ms: float = 10.0  # how long the oldest queued item may wait for a batch to fill
    max_request_items: int = 1024
    max_request_bytes: int = 8 * 1024 * 1024
    token: str | None = None  # bearer token for /v1/score and /v1/info; None: no auth

    def __post_init__(self):
        for name in ("max_batch_size", "max_request_items", "max_request_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")


class BadRequest(Exception):
    def __init__(self, status: int, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.status, self.field, self.reason = status, field, reason


@dataclass(frozen=True)
class _Entry:
    """One validated item: what to grade, and under which response type (None: no RBR term)."""

    item: GradeItem | None
    response_type: str | None
    id: Any = None


def _type_name(value) -> str:
    return "null" if value is None else {"str": "string", "int": "number", "float": "number", "bool": "boolean",
                                         "list": "array", "dict": "object"}.get(type(value).__name__, type(value).__name__)


def validate_item(rules: RuleSet, i: int, raw) -> _Entry:
    where = f"items[{i}]"
    if not isinstance(raw, dict):
        raise BadRequest(422, where, f"must be an object with conversation, completion and response_type or category, "
                                     f"got {_type_name(raw)}")
    item_id = raw.get("id")
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, (str, int))):
        raise BadRequest(422, f"{where}.id", f"must be a string or an integer, got {_type_name(item_id)}")

    # Which response type: response_type (a name or alias) or category (behavior policy); null = no RBR.
    keys = [k for k in ("response_type", "category") if k in raw]
    if not keys:
        raise BadRequest(422, f"{where}.response_type", "missing: give a response_type or a category (null for no RBR term)")
    resolved: dict[str, str | None] = {}
    for key in keys:
        value = raw[key]
        if value is None:
            resolved[key] = None
            continue
        if not isinstance(value, str):
            raise BadRequest(422, f"{where}.{key}", f"must be a string or null, got {_type_name(value)}")
        found = rules.find_response_type(value)
        if found is None:
            raise BadRequest(422, f"{where}.{key}",
                             f"unknown {key.replace('_', ' ')} {value!r} for rule set {rules.name!r}; response types: "
                             f"{sorted(rules.response_types)}, categories: {sorted(rules.behavior_policy)} "
                             "(send null for no RBR term)")
        resolved[key] = found.name
    if len(set(resolved.values())) > 1:
        raise BadRequest(422, f"{where}.category", f"resolves to {resolved['category']!r}, which contradicts "
                                                   f"response_type {resolved['response_type']!r}")
    response_type = next(iter(resolved.values()))

    conv = raw.get("conversation")
    if "conversation" not in raw:
        raise BadRequest(422, f"{where}.conversation", "missing")
    if isinstance(conv, str):
        messages = ({"role": "user", "content": conv},)
    elif isinstance(conv, list):
        if not conv:
            raise BadRequest(422, f"{where}.conversation", "empty list: give at least the user's turn")
        out = []
        for j, m in enumerate(conv):
            at = f"{where}.conversation[{j}]"
            if not isinstance(m, dict):
                raise BadRequest(422, at, f"must be an object with string 'role' and 'content', got {_type_name(m)}")
            for key in ("role", "content"):
                if key not in m:
                    raise BadRequest(422, f"{at}.{key}", "missing")
                if not isinstance(m[key], str):
                    raise BadRequest(422, f"{at}.{key}", f"must be a string, got {_type_name(m[key])}")
            if not m["role"]:
                raise BadRequest(422, f"{at}.role", "must not be empty")
            out.append({"role": m["role"], "content": m["content"]})
        messages = tuple(out)
    else:
        raise BadRequest(422, f"{where}.conversation",
                         f"must be a string or a list of {{role, content}} messages, got {_type_name(conv)}")

    if "completion" not in raw:
        raise BadRequest(422, f"{where}.completion", "missing")
    if not isinstance(raw["completion"], str):
        raise BadRequest(422, f"{where}.completion", f"must be a string, got {_type_name(raw['completion'])}")
    return _Entry(GradeItem(messages, raw["completion"]), response_type, item_id)


def _file_sha256(path: str | None) -> str | None:
    if not path:
        return None
    p = Path(path)
    p = p / "rbr_weights.json" if p.is_dir() else p
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return None


def create_app(rules: RuleSet, grader, weights=None, settings: ServiceSettings | None = None,
               weights_path: str | None = None) -> FastAPI:
    """The service. ``grader`` implements the Grader protocol; ``weights`` are RBRWeights for ``rules``
    (without them results carry no r_rbr)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    settings = settings or ServiceSettings()
    if weights is not None:
        rules.check_fingerprint(weights.rules_fingerprint, f"RBR weights {weights_path or ''}".strip())
        for rt in rules.response_types:  # fail at start-up, not on the first request of that type
            weights.vector(rules, rt)
    weights_sha256 = _file_sha256(weights_path)

    # A registry per app: several apps in one process (tests, a PPO run) must not share counters.
    registry = CollectorRegistry()
    requests_total = Counter("rbr_grader_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                             registry=registry)
    items_total = Counter("rbr_grader_items", "items answered (graded or not applicable)", registry=registry)
    errors_total = Counter("rbr_grader_errors", "failed requests by kind", ["kind"], registry=registry)
    batch_failures = Counter("rbr_grader_batch_failures", "grader batches that raised", registry=registry)
    batch_sizes = Histogram("rbr_grader_batch_size", "items per grader batch", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
    batch_seconds = Histogram("rbr_grader_batch_seconds", "grader time per batch", registry=registry,
                              buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600))
    latency = Histogram("rbr_grader_request_seconds", "POST /v1/score latency, all outcomes", registry=registry,
                        buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600))
    queued = Gauge("rbr_grader_queue_items", "items waiting for a grader batch", registry=registry)

    def score_batch(entries: list[_Entry]) -> list[dict]:
        """Runs in the batcher's worker thread."""
        out: list[dict | None] = [None] * len(entries)
        # One grader call per response type: grade_completions grades every item on the union of the
        # propositions its batch needs, and a mixed batch would cost the LLM grader up to twice the
        # (item, proposition) prompts. Per-item graders (the classifier) process each item once either way.
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            if e.response_type is not None:
                groups.setdefault(e.response_type, []).append(i)
        for rt, idx in groups.items():
            graded = grade_completions(rules, grader, [entries[i].item for i in idx], [rt] * len(idx))
            for i, g in zip(idx, graded):
                probs = g.proposition_probs
                bad = {p: v for p, v in probs.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)}
                if bad:
                    raise GraderError(f"the grader returned probabilities outside [0, 1]: {bad}")
                r_rbr = weights.reward(rules, g) if weights is not None else None
                out[i] = RBRScore.from_graded(g, r_rbr, entries[i].id).to_json()
        for i, e in enumerate(entries):
            if out[i] is None:
                out[i] = RBRScore.not_applicable(e.id).to_json()
        return out

    def on_batch(n: int, seconds: float) -> None:
        batch_sizes.observe(n)
        batch_seconds.observe(seconds)

    batcher = DynamicBatcher(score_batch, settings.max_batch_size, settings.max_wait_ms, on_batch)
    queued.set_function(lambda: batcher.queued)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="rbr-rlhf grader service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.settings, app.state.registry = batcher, settings, registry

    def error(endpoint: str, status: int, field: str, reason: str, kind: str, headers: dict | None = None) -> JSONResponse:
        errors_total.labels(kind=kind).inc()
        requests_total.labels(endpoint=endpoint, status=str(status)).inc()
        return JSONResponse({"error": {"field": field, "reason": reason}, "detail": f"{field}: {reason}"},
                            status_code=status, headers=headers)

    expected_auth = f"Bearer {settings.token}".encode() if settings.token else None

    def authorized(request: Request) -> bool:
        if expected_auth is None:
            return True
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, expected_auth)  # constant time: no token prefix guessing

    def unauthorized(endpoint: str) -> JSONResponse:
        return error(endpoint, 401, "authorization", "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                     "unauthorized", {"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        """The body, refusing more than max_request_bytes without reading it all (chunked bodies too)."""
        limit = settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise BadRequest(400, "content-length", f"not a byte count: {declared[:40]!r}")
            if int(declared) > limit:
                raise BadRequest(413, "body", f"request of {int(declared)} bytes exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, "body", f"request of more than {limit} bytes exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def parse(request: Request) -> list[_Entry]:
        raw = await read_body(request)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(400, "body", f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadRequest(400, "body", f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except RecursionError:
            raise BadRequest(400, "body", "malformed JSON: nested too deeply") from None
        if not isinstance(body, dict):
            raise BadRequest(422, "body", f"must be a JSON object {{\"items\": [...]}}, got {_type_name(body)}")
        if "items" not in body:
            raise BadRequest(422, "items", "missing: the body must be an object {\"items\": [...]}")
        items = body["items"]
        if not isinstance(items, list):
            raise BadRequest(422, "items", f"must be a list, got {_type_name(items)}")
        if not items:
            raise BadRequest(422, "items", "empty batch: send at least one item")
        if len(items) > settings.max_request_items:
            raise BadRequest(413, "items", f"{len(items)} items exceed the limit of {settings.max_request_items} per "
                                           "request; split the batch")
        return [validate_item(rules, i, it) for i, it in enumerate(items)]

    @app.post("/v1/score")
    async def score(request: Request):
        start = time.monotonic()
        try:
            if not authorized(request):
                return unauthorized("/v1/score")
            try:
                entries = await parse(request)
            except BadRequest as e:
                kind = {400: "bad_request", 413: "too_large"}.get(e.status, "invalid")
                return error("/v1/score", e.status, e.field, e.reason, kind)
            try:
                results = await batcher.submit(entries)
            except BatcherClosed as e:
                return error("/v1/score", 503, "service", str(e), "shutdown", {"Retry-After": "1"})
            except Exception as e:  # noqa: BLE001 - a grader failure is a 503, never a silent zero reward
                batch_failures.inc()
                log.warning("grader backend failed: %s: %s", type(e).__name__, e, exc_info=not isinstance(e, GraderError))
                return error("/v1/score", 503, "grader", f"grader backend failed: {type(e).__name__}: {e}", "grader",
                             {"Retry-After": "1"})
            items_total.inc(len(results))
            requests_total.labels(endpoint="/v1/score", status="200").inc()
            return {"results": results, "rules_fingerprint": rules.fingerprint}
        finally:
            latency.observe(time.monotonic() - start)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "queued_items": batcher.queued}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/info")
    async def info(request: Request):
        if not authorized(request):
            return unauthorized("/v1/info")
        requests_total.labels(endpoint="/v1/info", status="200").inc()
        return {"rules": {"name": rules.name, "fingerprint": rules.fingerprint, "source": rules.source,
                          "response_types": list(rules.response_types), "categories": list(rules.behavior_policy)},
                "grader": grader.describe() if grader is not None else None,
                "weights": None if weights is None else {
                    "path": str(weights_path) if weights_path else None, "sha256": weights_sha256,
                    "rules_fingerprint": weights.rules_fingerprint, "reward_model": weights.reward_model},
                "limits": {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms,
                           "max_request_items": settings.max_request_items,
                           "max_request_bytes": settings.max_request_bytes},
                "auth": settings.token is not None}

    return app
