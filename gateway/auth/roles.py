"""Who may do what: the four roles and the rule that decides whether one grants another.

Kept apart from the web layer so the user service and the CLI (which validate roles) do not
import FastAPI. ``gateway.api.deps`` re-exports ``Role`` for the routes.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OPERATOR = "operator"
    TECHNICIAN = "technician"
    MANAGER = "manager"
    ADMIN = "admin"


# What each role may do, cumulatively: a technician can do what an operator can, and so on.
# Managers review and export; technicians change thresholds and overrides; admins everything.
# Technician and manager are side by side: neither includes the other.
GRANTED_BY: dict[Role, frozenset[Role]] = {
    Role.OPERATOR: frozenset({Role.OPERATOR, Role.TECHNICIAN, Role.MANAGER, Role.ADMIN}),
    Role.MANAGER: frozenset({Role.MANAGER, Role.ADMIN}),
    Role.TECHNICIAN: frozenset({Role.TECHNICIAN, Role.ADMIN}),
    Role.ADMIN: frozenset({Role.ADMIN}),
}


def may(actor_role: Role, needed: Role) -> bool:
    """Whether someone with ``actor_role`` may do what needs ``needed``.

    >>> may(Role.TECHNICIAN, Role.OPERATOR), may(Role.OPERATOR, Role.TECHNICIAN)
    (True, False)
    """
    return actor_role in GRANTED_BY[needed]
