"""Errors a user can act on; the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

__all__ = ["DriftloopError", "NotFoundError", "StoreUnavailable"]


class DriftloopError(Exception):
    """Base of the errors whose message is meant for the person running driftloop."""


class StoreUnavailable(DriftloopError):
    """The feedback store (PostgreSQL) cannot be started or reached."""


class NotFoundError(DriftloopError):
    """Something named by the caller (a request id, a model tag, a Bento) does not exist."""
