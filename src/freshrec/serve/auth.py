"""API keys: read < write < admin.

Keys are compared with :func:`hmac.compare_digest` against every configured
key (the time taken does not depend on where a guess diverges or which key
matched) and are never logged or echoed.
"""

from __future__ import annotations

import hmac
import ipaddress
from enum import IntEnum

from freshrec.settings import ServeSettings


class Role(IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Keys:
    """Which role a presented key has; ``open=True`` lets everyone in as admin."""

    def __init__(self, settings: ServeSettings, open: bool = False):
        self.open = open
        self._keys = [
            (key.get_secret_value().encode(), role)
            for role, keys in (
                (Role.READ, settings.read_keys),
                (Role.WRITE, settings.write_keys),
                (Role.ADMIN, settings.admin_keys),
            )
            for key in keys
        ]
        if not open and not self._keys:
            raise ValueError(
                "no API key is configured: set [serve] read_keys, write_keys and admin_keys "
                "(e.g. FRESHREC_SERVE__ADMIN_KEYS='[\"...\"]'), or pass --insecure-no-auth on a loopback address"
            )
        if any(len(k) < 16 for k, _ in self._keys):
            raise ValueError("API keys must be at least 16 characters long")

    def role_of(self, presented: str | None) -> Role | None:
        if self.open:
            return Role.ADMIN
        if not presented:
            return None
        candidate = presented.encode()
        found: Role | None = None
        for key, role in self._keys:
            if hmac.compare_digest(candidate, key) and (found is None or role > found):
                found = role
        return found

    def check(self, presented: str | None, needed: Role) -> None:
        role = self.role_of(presented)
        if role is None:
            message = "missing API key" if not presented else "unknown API key"
            raise AuthError(401, f"{message}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
        if role < needed:
            raise AuthError(403, f"this key may {role.name.lower()}; the request needs a {needed.name.lower()} key")


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
