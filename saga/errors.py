"""Domain errors of the saga core.

Each carries a message a user can act on; the edges (REST, gRPC, CLI) map them to status codes.
Nothing here knows about HTTP or gRPC.
"""

from __future__ import annotations


class SagaError(Exception):
    """Base of every domain error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(SagaError):
    """Input that breaks a rule: a bad workflow, field or parameter (REST 400 / INVALID_ARGUMENT)."""


class NotFound(SagaError):
    """An unknown saga or workflow (REST 404 / NOT_FOUND)."""


class Conflict(SagaError):
    """A request that the saga's current status forbids (REST 409 / FAILED_PRECONDITION)."""


class IllegalEvent(SagaError):
    """An event that is not legal in the saga's current status; the state is left unchanged."""
