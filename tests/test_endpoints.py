"""rbr_rlhf.endpoints: one retry policy keyed on status codes, the openai:MODEL@URL spec, logsumexp;
rbr_rlhf.seeding: the hash every seeded split and step seed uses."""

from __future__ import annotations

import hashlib
import math

import httpx
import pytest

from rbr_rlhf.endpoints import EndpointError, RetryPolicy, logsumexp, parse_openai_spec, request
from rbr_rlhf.seeding import stable_fraction, stable_hash


class Scripted:
    """An httpx.Client stand-in answering from a script: an int is a status, an exception is raised."""

    def __init__(self, *script):
        self.script, self.calls = list(script), 0

    def request(self, method, url, **kw):
        self.calls += 1
        what = self.script.pop(0)
        if isinstance(what, Exception):
            raise what
        if isinstance(what, tuple):  # (status, body text)
            return httpx.Response(what[0], text=what[1], request=httpx.Request(method, url))
        return httpx.Response(what, json={"ok": what}, request=httpx.Request(method, url))


def run(client, tries=4):
    waits = []
    try:
        return request(client, "POST", "http://x/v1/completions", RetryPolicy(tries=tries, backoff=0.5), sleep=waits.append), waits
    except EndpointError as e:
        return e, waits


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_429_and_5xx_are_retried_with_backoff(status):
    client = Scripted(status, status, 200)
    resp, waits = run(client)
    assert resp.status_code == 200 and client.calls == 3 and waits == [0.5, 1.0]


def test_connection_errors_are_retried():
    client = Scripted(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), 200)
    resp, waits = run(client)
    assert resp.status_code == 200 and client.calls == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_raise_at_once(status):
    client = Scripted(status, 200)
    err, waits = run(client)
    assert isinstance(err, EndpointError) and err.status == status and not err.retried
    assert client.calls == 1 and waits == [] and f"rejected the request ({status})" in str(err)


def test_gives_up_after_the_last_try_naming_the_last_error():
    client = Scripted(503, httpx.ConnectError("connection refused"), 503)
    err, waits = run(client, tries=3)
    assert isinstance(err, EndpointError) and err.retried and client.calls == 3 and len(waits) == 2
    assert "failed after 3 tries" in str(err) and "503" in str(err)


def test_the_decision_is_the_status_not_the_text():
    """A 5xx whose body says "refused" is still retried; a 4xx that does not say it still is not."""
    assert run(Scripted((503, "connection refused by the backend"), 200))[0].status_code == 200
    err = run(Scripted((403, "forbidden"), 200))[0]
    assert isinstance(err, EndpointError) and not err.retried


def test_backoff_is_capped():
    p = RetryPolicy(tries=10, backoff=1.0, max_backoff=4.0)
    assert [p.delay(a) for a in range(6)] == [0.0, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_parse_openai_spec():
    assert parse_openai_spec("openai:Qwen/Qwen2.5-7B@http://127.0.0.1:8000/v1/") == ("Qwen/Qwen2.5-7B", "http://127.0.0.1:8000/v1")
    assert parse_openai_spec("openai:org/m@v2@https://h/v1") == ("org/m@v2", "https://h/v1")  # the URL follows the last @
    for bad in ("openai:model", "openai:@http://h/v1", "openai:m@ftp://h", "llm:m@http://h/v1", "openai:m@h:8000"):
        with pytest.raises(ValueError, match="expected openai:MODEL@http"):
            parse_openai_spec(bad)


def test_grader_and_judge_parse_the_same_spec(default_rules):
    from rbr_rlhf.adaptive.scoring import JudgeConfig, OpenAIRuleJudge
    from rbr_rlhf.grader.factory import build_grader

    grader = build_grader("openai:m@http://127.0.0.1:9/v1/", default_rules)
    judge = OpenAIRuleJudge(JudgeConfig(model="openai:m@http://127.0.0.1:9/v1/"))
    assert grader.backend.base_url == judge.url == "http://127.0.0.1:9/v1"
    for make in (lambda s: build_grader(s, default_rules), lambda s: OpenAIRuleJudge(JudgeConfig(model=s))):
        with pytest.raises(ValueError, match="expected openai:MODEL@http"):
            make("openai:no-url")


def test_logsumexp():
    assert logsumexp([]) == -math.inf and logsumexp([-math.inf]) == -math.inf
    assert logsumexp([math.log(0.2), math.log(0.3), -math.inf]) == pytest.approx(math.log(0.5))
    assert logsumexp([1000.0, 1000.0]) == pytest.approx(1000.0 + math.log(2))


def test_stable_hash_is_the_sha256_prefix():
    expect = int(hashlib.sha256(b"0:3:rollout").hexdigest()[:8], 16)
    assert stable_hash(0, 3, "rollout") == expect
    assert stable_hash("s", "k", digits=16) == int(hashlib.sha256(b"s:k").hexdigest()[:16], 16)
    assert 0.0 <= stable_fraction(1, "x") <= 1.0 and stable_fraction(1, "x") == stable_hash(1, "x") / 0xFFFFFFFF
