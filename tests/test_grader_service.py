"""The grader service, for real: uvicorn on a free loopback port, HTTP requests, the real batcher."""

import json
import threading
import time

import httpx
import numpy as np
import pytest

from rbr_rlhf.grader.base import GradeItem, GraderError
from rbr_rlhf.rbr import RBRWeights, feature_spec, grade_completions
from rbr_rlhf.service.app import ServiceSettings, create_app
from rbr_rlhf.service.client import GraderClient, GraderServiceError
from rbr_rlhf.procs import free_port
from rbr_rlhf.service.server import GraderServer


class KeywordGrader:
    """Deterministic and fast: P(p) depends on the completion's words. Counts its batches."""

    name = "keywords"

    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.fail, self.delay, self.batches = fail, delay, []

    def grade(self, items, propositions):
        self.batches.append(len(items))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise GraderError("backend exploded")
        out = np.zeros((len(items), len(propositions)))
        for i, it in enumerate(items):
            words = it.completion.lower()
            for j, p in enumerate(propositions):
                h = (sum(map(ord, p)) * 31 + len(words)) % 97 / 97.0
                out[i, j] = 0.9 if p.split("_")[0] in words else h * 0.5
        return out

    def describe(self):
        return {"kind": "keywords"}


def item(k=0, category="K-R"):
    return {"conversation": [{"role": "user", "content": f"question {k}"}], "completion": f"I'm sorry, apology {k} " + "x" * (k % 7),
            "category": category}


@pytest.fixture
def weights(default_rules):
    w = {rt: {n: 0.1 * (i % 5 - 2) for i, n in enumerate(feature_spec(default_rules, rt).names)} for rt in default_rules.response_types}
    return RBRWeights(default_rules.fingerprint, w, "toy-rm")


@pytest.fixture
def service(default_rules, weights):
    grader = KeywordGrader()
    app = create_app(default_rules, grader, weights, ServiceSettings(max_batch_size=64, max_wait_ms=20, max_request_items=100,
                                                                      max_request_bytes=200_000, token="s3cret"))
    with GraderServer(app) as url:
        yield url, grader


def auth(token="s3cret"):
    return {"Authorization": f"Bearer {token}"}


def test_scores_match_direct_grading(service, default_rules, weights):
    url, _ = service
    items = [item(k, c) for k, c in enumerate(["K-R", "Comply", "SH-R2", "hard_refuse", "None"])]
    r = httpx.post(f"{url}/v1/score", json={"items": items}, headers=auth())
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    graded = grade_completions(default_rules, KeywordGrader(), [GradeItem.from_row(i) for i in items], [i["category"] for i in items])
    for res, g in zip(results, graded):
        assert res["rbr_applies"] and res["response_type"] == g.response_type
        assert res["class_probs"] == pytest.approx(g.class_probs)
        assert res["r_rbr"] == pytest.approx(weights.reward(default_rules, g))


def test_item_without_safety_response_type(service):
    url, _ = service
    r = httpx.post(f"{url}/v1/score", json={"items": [{**item(), "category": None}, item(1)]}, headers=auth())
    first, second = r.json()["results"]
    assert first["rbr_applies"] is False and first["r_rbr"] is None and "no RBR term" in first["note"]
    assert second["rbr_applies"] is True


@pytest.mark.parametrize("body, status, field, reason", [
    (b"{not json", 400, "body", "malformed JSON"),
    (b"\xff\xfe{}", 400, "body", "not valid UTF-8"),
    (json.dumps({"itemz": []}).encode(), 422, "items", "missing"),
    (json.dumps({"items": "x"}).encode(), 422, "items", "must be a list"),
    (json.dumps({"items": []}).encode(), 422, "items", "empty batch"),
    (json.dumps({"items": [item()] * 101}).encode(), 413, "items", "exceed the limit of 100"),
    (json.dumps({"items": [{"completion": "x", "category": "K-R"}]}).encode(), 422, "items[0].conversation", "missing"),
    (json.dumps({"items": [{"conversation": "hi", "category": "K-R"}]}).encode(), 422, "items[0].completion", "missing"),
    (json.dumps({"items": [{"conversation": "hi", "completion": 3, "category": "K-R"}]}).encode(), 422, "items[0].completion", "must be a string"),
    (json.dumps({"items": [item(), {"conversation": "hi", "completion": "x", "category": "Z-Z"}]}).encode(), 422, "items[1].category", "unknown category 'Z-Z'"),
    (json.dumps({"items": [{"conversation": "hi", "completion": "x", "response_type": "lecture"}]}).encode(), 422, "items[0].response_type", "unknown response type"),
    (json.dumps({"items": [{"conversation": [{"role": "user"}], "completion": "x", "category": "K-R"}]}).encode(), 422, "items[0].conversation[0].content", "missing"),
    (json.dumps({"items": [{"conversation": "hi", "completion": "x"}]}).encode(), 422, "items[0].response_type", "missing"),
    (b"x" * 200_001, 413, "body", "exceeds the limit"),
])
def test_bad_input_gets_4xx_naming_field_and_reason(service, body, status, field, reason):
    url, _ = service
    r = httpx.post(f"{url}/v1/score", content=body, headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and reason in err["reason"]
    assert httpx.post(f"{url}/v1/score", json={"items": [item()]}, headers=auth()).status_code == 200  # still serving


def test_auth_required(service):
    url, _ = service
    assert httpx.post(f"{url}/v1/score", json={"items": [item()]}).status_code == 401
    assert httpx.post(f"{url}/v1/score", json={"items": [item()]}, headers=auth("wrong")).status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_info_and_metrics(service, default_rules):
    url, _ = service
    info = httpx.get(f"{url}/v1/info", headers=auth()).json()
    assert info["rules"]["fingerprint"] == default_rules.fingerprint and info["weights"]["reward_model"] == "toy-rm"
    httpx.post(f"{url}/v1/score", json={"items": [item()]}, headers=auth())
    httpx.post(f"{url}/v1/score", json={"items": []}, headers=auth())
    text = httpx.get(f"{url}/metrics").text
    assert 'rbr_grader_requests_total{endpoint="/v1/score",status="200"}' in text
    assert 'rbr_grader_requests_total{endpoint="/v1/score",status="422"}' in text
    assert "rbr_grader_batch_size_bucket" in text and "rbr_grader_request_seconds" in text


def test_grader_failure_is_503_and_service_survives(default_rules):
    grader = KeywordGrader(fail=True)
    with GraderServer(create_app(default_rules, grader)) as url:
        r = httpx.post(f"{url}/v1/score", json={"items": [item()]})
        assert r.status_code == 503 and "backend exploded" in r.json()["error"]["reason"]
        grader.fail = False
        assert httpx.post(f"{url}/v1/score", json={"items": [item()]}).status_code == 200


def test_concurrent_requests_are_merged_into_batches(default_rules):
    grader = KeywordGrader(delay=0.05)
    app = create_app(default_rules, grader, settings=ServiceSettings(max_batch_size=64, max_wait_ms=50))
    with GraderServer(app) as url:
        client = GraderClient(url)
        threads = [threading.Thread(target=client.rbr_scores, args=([item(k)],)) for k in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(grader.batches) == 24
    assert len(grader.batches) < 12 and max(grader.batches) > 2  # fewer, larger batches than requests


def test_client_retries_then_fails_clearly():
    client = GraderClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01, timeout=2)
    start = time.time()
    with pytest.raises(GraderServiceError, match="failed after 3 tries"):
        client.rbr_scores([item()])
    assert time.time() - start < 10


def test_client_does_not_retry_4xx(service):
    url, _ = service
    with pytest.raises(GraderServiceError, match="rejected the request \\(422\\)") as e:
        GraderClient(url, token="s3cret").rbr_scores([{"conversation": "hi"}])
    assert e.value.status == 422


def test_client_retries_through_a_restart(default_rules):
    """503s while the backend is down, then success: the client's retries bridge the gap."""
    grader = KeywordGrader(fail=True)
    with GraderServer(create_app(default_rules, grader)) as url:
        threading.Timer(0.3, lambda: setattr(grader, "fail", False)).start()
        results = GraderClient(url, retries=6, backoff=0.1).rbr_scores([item()])
        assert results[0].rbr_applies


def test_serve_grader_cli_process(tmp_path, default_rules, weights):
    """The real command in a subprocess: `python -m rbr_rlhf.cli grader serve` with the label oracle."""
    from rbr_rlhf.service.server import GraderProcess

    weights.save(tmp_path / "w.json")
    with GraderProcess("default", "labels", str(tmp_path / "w.json"), token="t0k", log_path=tmp_path / "log") as proc:
        info = GraderClient(proc.url, token="t0k").info()
        assert info["rules"]["fingerprint"] == default_rules.fingerprint
        r = httpx.post(f"{proc.url}/v1/score", json={"items": [item()]}, headers={"Authorization": "Bearer t0k"})
        assert r.status_code == 503 and "labels grader" in r.json()["error"]["reason"]  # no labels: refused, not zero
        assert proc.alive()
    assert proc.proc is None


@pytest.mark.slow
def test_load_32_clients_2000_items_each_answered_once_and_exactly(default_rules, weights):
    """32 concurrent clients x 2,000 items in all: every item answered once, equal to scoring it alone."""
    from concurrent.futures import ThreadPoolExecutor

    grader = KeywordGrader()
    app = create_app(default_rules, grader, weights, ServiceSettings(max_batch_size=128, max_wait_ms=5))
    items = [item(k, ["K-R", "Comply", "SH-R1", "SH-R2", None][k % 5]) for k in range(2000)]
    for k, it in enumerate(items):
        it["completion"] += f" #{k}"
    with GraderServer(app) as url:
        def run(client_id):
            client = GraderClient(url)
            mine = list(range(client_id, len(items), 32))
            out = {}
            for s in range(0, len(mine), 7):  # small requests, interleaved with the other clients'
                idx = mine[s:s + 7]
                for k, res in zip(idx, client.rbr_scores([items[k] for k in idx])):
                    assert k not in out
                    out[k] = res
            return out
        with ThreadPoolExecutor(32) as pool:
            answers = {}
            for part in pool.map(run, range(32)):
                assert not set(part) & set(answers)
                answers.update(part)
        assert sorted(answers) == list(range(2000))
        alone = KeywordGrader()
        for k in range(0, 2000, 1):
            it = items[k]
            if it["category"] is None:
                assert answers[k].rbr_applies is False
                continue
            g = grade_completions(default_rules, alone, [GradeItem.from_row(it)], [it["category"]])[0]
            assert answers[k].r_rbr == pytest.approx(weights.reward(default_rules, g), abs=1e-12)
    assert max(grader.batches) > 7  # requests were merged
