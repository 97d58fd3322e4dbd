"""Client of the grader service: timeouts, retries with exponential backoff on 503 and connection
errors, a clear exception after the last try; 4xx errors are the caller's and raise at once."""

from __future__ import annotations

import time
from typing import Sequence

import httpx

from ..rbr.score import RBRScore


class GraderServiceError(RuntimeError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class GraderClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0, retries: int = 4,
                 backoff: float = 0.5, chunk_size: int = 512):
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.chunk_size = retries, backoff, chunk_size
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
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = self.http.request(method, self.url + path, json=body)
            except httpx.TransportError as e:  # refused, reset, timed out: the service may be restarting
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 503:
                last = f"503: {r.text[:300]}"
                continue
            if r.status_code >= 400:
                raise GraderServiceError(f"grader service {self.url}{path} rejected the request ({r.status_code}): "
                                         f"{r.text[:500]}", r.status_code)
            return r.json()
        raise GraderServiceError(f"grader service {self.url}{path} failed after {self.retries + 1} tries; last error: {last}",
                                 503)

    def close(self) -> None:
        self.http.close()
