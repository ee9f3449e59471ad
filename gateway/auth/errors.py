"""Errors of logins and user management, in the project's error tree (one-line messages).

The API maps them like the rest: ``InvalidAccountInput`` → 422, ``UserExistsError`` and
``LastAdminError`` → 409 (``ConflictError``), ``UnknownUserError`` → 404 (``NotFoundError``);
the CLI prints the message after ``error:``.
"""

from __future__ import annotations

from cacao_dryer.errors import CacaoDryerError, ConflictError, NotFoundError


class InvalidAccountInput(CacaoDryerError, ValueError):
    """A username, role, language or token name that is not acceptable (says which and why)."""


class WeakPasswordError(InvalidAccountInput):
    """A password the policy refuses (too short, the username, one repeated character)."""


class UserExistsError(ConflictError):
    """A user with that username already exists."""


class UnknownUserError(NotFoundError):
    """No user (or API token) by that name or id."""


class LastAdminError(ConflictError):
    """The change would leave the gateway with no enabled administrator."""
