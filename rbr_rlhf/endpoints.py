"""HTTP endpoints the framework calls: one retry policy, the ``openai:MODEL@URL`` spec, ``logsumexp``.

Used by the OpenAI-compatible grader backend (``grader/llm.py``), the adaptive rules' judge
(``adaptive/scoring.py``) and the grader service's client (``service/client.py``).

The retry policy is keyed on what the server said, never on an error's text: connection errors, 429
(rate limited) and 5xx (overloaded, restarting) are retried with exponential backoff; any other 4xx is
the caller's mistake and raises at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence


class EndpointError(RuntimeError):
    """A request that did not succeed. ``status`` is the last HTTP status (None: no answer at all);
    ``retried`` says whether it was given up after the last try (True) or rejected at once (False)."""

    def __init__(self, message: str, status: int | None = None, retried: bool = True, detail: str = ""):
        super().__init__(message)
        self.status, self.retried, self.detail = status, retried, detail


@dataclass(frozen=True)
class RetryPolicy:
    tries: int = 4                    # attempts in all
    backoff: float = 0.5              # seconds before the second try; doubles each time
    max_backoff: float = 10.0         # cap of one wait

    @staticmethod
    def retryable(status: int) -> bool:
        return status == 429 or status >= 500

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt`` (0-based; none before the first)."""
        return 0.0 if attempt == 0 else min(self.backoff * 2 ** (attempt - 1), self.max_backoff)


def request(client, method: str, url: str, policy: RetryPolicy = RetryPolicy(), sleep=time.sleep, **kwargs):
    """``client.request(method, url, **kwargs)`` (an ``httpx.Client``) under ``policy``: the response of
    the first try with a status below 400, else ``EndpointError``."""
    import httpx

    last, status = "no attempt made", None
    for attempt in range(max(1, policy.tries)):
        if attempt:
            sleep(policy.delay(attempt))
        try:
            resp = client.request(method, url, **kwargs)
        except httpx.TransportError as e:  # refused, reset, timed out: the server may be (re)starting
            last, status = f"{type(e).__name__}: {e}", None
            continue
        if resp.status_code < 400:
            return resp
        status, body = resp.status_code, resp.text[:500]
        if not policy.retryable(status):
            raise EndpointError(f"{url} rejected the request ({status}): {body}", status, retried=False, detail=body)
        last = f"{status}: {body[:300]}"
    raise EndpointError(f"{url} failed after {max(1, policy.tries)} tries; last error: {last}", status, detail=last)


def parse_openai_spec(spec: str) -> tuple[str, str]:
    """``openai:MODEL@URL`` -> (MODEL, URL without a trailing slash). MODEL may hold ``@`` and ``:``
    (the URL is what follows the last ``@``); URL must be http(s)."""
    kind, _, rest = spec.partition(":")
    model, sep, url = rest.rpartition("@")
    if kind != "openai" or not sep or not model or not url.startswith(("http://", "https://")):
        raise ValueError(f"spec {spec!r}: expected openai:MODEL@http://HOST:PORT/v1")
    return model, url.rstrip("/")


def logsumexp(values: Sequence[float]) -> float:
    """log(sum(exp(v))) of plain floats, -inf for none (a top-k logprob list that lacks every variant)."""
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    m = max(finite)
    return m + math.log(sum(math.exp(v - m) for v in finite))
