"""Client of the grader service: timeouts, retries with exponential backoff on connection errors, 429
and 5xx (``rbr_rlhf.endpoints``), a clear exception after the last try; other 4xx errors are the
caller's and raise at once."""

from __future__ import annotations

from typing import Sequence

import httpx

from ..endpoints import EndpointError, RetryPolicy, request
from ..rbr.score import RBRScore


class GraderServiceError(RuntimeError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class GraderClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0, retries: int = 4,
                 backoff: float = 0.5, chunk_size: int = 512):
        self.url = url.rstrip("/")
        self.retry = RetryPolicy(tries=retries + 1, backoff=backoff, max_backoff=float("inf"))
        self.chunk_size = chunk_size
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(timeout=timeout, headers=headers)

    def rbr_scores(self, items: Sequence[dict]) -> list[RBRScore]:
        """One ``RBRScore`` per item (``conversation``, ``completion``, ``category`` or ``response_type``),
        in the order of ``items``; large lists go in chunks."""
        out: list[RBRScore] = []
        for s in range(0, len(items), self.chunk_size):
            results = self._post("/v1/score", {"items": list(items[s:s + self.chunk_size])})["results"]
            out += [RBRScore.from_json(r) for r in results]
        return out

    def info(self) -> dict:
        return self._request("GET", "/v1/info")

    def healthy(self) -> bool:
        try:
            return self.http.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            return request(self.http, method, self.url + path, self.retry, json=body).json()
        except EndpointError as e:
            if not e.retried:
                raise GraderServiceError(f"grader service {self.url}{path} rejected the request ({e.status}): {e.detail}",
                                         e.status) from None
            raise GraderServiceError(f"grader service {self.url}{path} failed after {self.retry.tries} tries; last error: "
                                     f"{e.detail}", 503) from None

    def close(self) -> None:
        self.http.close()
