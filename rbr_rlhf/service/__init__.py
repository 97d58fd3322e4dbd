"""The batched RBR grader service (FastAPI on uvicorn) and its client."""

from .client import GraderClient, GraderServiceError

__all__ = ["GraderClient", "GraderServiceError"]
