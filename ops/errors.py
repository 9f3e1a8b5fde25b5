"""Exception hierarchy of the ops package (the stack's processes)."""

from __future__ import annotations


class StackError(Exception):
    """A stack service could not be prepared, started, checked or stopped."""


class ServiceUnhealthy(StackError):
    """A service exited or did not answer its health check in time; the message quotes its log."""
