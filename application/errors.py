"""Errors of the application layer (domain errors pass through unchanged)."""

from __future__ import annotations


class ApplicationError(Exception):
    """The write side could not carry out a command for a reason outside the domain rules."""


class ConcurrencyConflictError(ApplicationError):
    """Other writers kept changing the same conversation; the command was retried and gave up."""


class WriterStoppedError(ApplicationError):
    """The group-commit writer is not running (shutting down, or never started)."""
