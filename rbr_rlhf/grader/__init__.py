"""Graders: P(proposition is true | conversation, completion)."""

from .base import GradeItem, Grader, GraderError
from .factory import build_grader

__all__ = ["GradeItem", "Grader", "GraderError", "build_grader"]
