"""Password policy and hashing (argon2id).

Parameters come from the ``[api]`` settings; the defaults are RFC 9106's second recommended
option ("low memory": t=3, 64 MiB, 4 lanes), about 0.25 s per hash on a 2-core x86 and well
within a Raspberry Pi 4's memory. A stored hash made with other parameters is re-hashed at the
next successful login (``needs_rehash``), so raising the cost upgrades every account over time.
The floor (19 MiB, t=2, p=1) is OWASP's minimum argon2id configuration.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.auth.errors import WeakPasswordError

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256  # long passphrases are welcome; megabyte bodies are not

MIN_MEMORY_KIB = 19_456  # OWASP Password Storage Cheat Sheet, argon2id minimum
MIN_TIME_COST = 2
# Hashes computed at once: each takes memory_kib of RAM, and the web server's thread pool
# (40 threads) could otherwise run 40 at a time (2.5 GiB at 64 MiB) under a login flood.
MAX_CONCURRENT_HASHES = 2


@dataclass(frozen=True)
class HashParameters:
    time_cost: int = 3
    memory_kib: int = 65_536
    parallelism: int = 4


def check_password(username: str, password: str) -> None:
    """Refuse a password a guesser would try first; ``WeakPasswordError`` says why.

    >>> check_password("ana", "secador-norte-2026")
    >>> check_password("ana", "short")
    Traceback (most recent call last):
    ...
    gateway.auth.errors.WeakPasswordError: password too short: at least 10 characters
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPasswordError(
            f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
    if password.strip().casefold() == username.strip().casefold():
        raise WeakPasswordError("password must not be the username")
    if len(set(password)) == 1:
        raise WeakPasswordError("password must not be one character repeated")


class PasswordHashing:
    """argon2id hashes in PHC string form (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``),
    which carry their own parameters and salt."""

    def __init__(self, parameters: HashParameters = HashParameters()) -> None:
        if parameters.memory_kib < MIN_MEMORY_KIB or parameters.time_cost < MIN_TIME_COST:
            raise ValueError(f"argon2id parameters below the minimum (m={MIN_MEMORY_KIB} KiB, "
                             f"t={MIN_TIME_COST})")
        self.parameters = parameters
        self._hasher = PasswordHasher(time_cost=parameters.time_cost,
                                      memory_cost=parameters.memory_kib,
                                      parallelism=parameters.parallelism)
        self._dummy: str | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_HASHES)

    def hash(self, password: str) -> str:
        with self._slots:
            return self._hasher.hash(password)

    def verify(self, stored_hash: str, password: str) -> bool:
        """True if ``password`` matches; False for a mismatch or an unreadable stored hash."""
        try:
            with self._slots:
                return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    def waste_time(self, password: str) -> None:
        """Verify against a dummy hash, so a login for a user that does not exist costs the
        same as one for a user who does (no telling usernames apart by timing)."""
        if self._dummy is None:
            self._dummy = self.hash("not a password of anyone")
        self.verify(self._dummy, password)
