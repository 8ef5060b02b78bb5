"""API keys of the serving API: the ``LAMBDAREC_API_KEYS`` format, hashing and minting.

An entry is ``name:scope[+scope]:sha256hex``; entries are comma-separated. Only the SHA-256 of a
secret is configured, so the setting (and every process environment that holds it) never holds a
usable key. An unsalted hash is enough here because minted secrets are 256 random bits: there is
no dictionary to precompute.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

#: What a key may be allowed to do: ``events`` is POST /events, ``recommend`` is /recommend,
#: ``dashboard`` the operator dashboard's figures (/dashboard/data).
SCOPES = ("events", "recommend", "dashboard")
#: Minted secrets start with this, so a leaked one is recognisable in logs and secret scanners.
SECRET_PREFIX = "lrk_"

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_FIX = "mint one with `lambdarec api-key new --name NAME --scopes events,recommend`"


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]
    digest: bytes


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_entries(text: str) -> list[ApiKey]:
    """The keys of a ``LAMBDAREC_API_KEYS`` value; a malformed entry raises a one-line ValueError
    naming the entry (by name, never its hash) and the fix."""
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for position, raw in enumerate(filter(None, (p.strip() for p in text.split(",")))):
        parts = raw.split(":")
        label = f"LAMBDAREC_API_KEYS entry {position + 1}"
        if len(parts) != 3:
            raise ValueError(f"{label} is not name:scope[+scope]:sha256hex; {_FIX}")
        name, scopes, digest = parts
        if not _NAME.fullmatch(name):
            raise ValueError(f"{label} has a name outside [A-Za-z0-9_.-]{{1,64}}; {_FIX}")
        wanted = scopes.split("+")
        unknown = sorted(set(wanted) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(
                f"{label} ({name}) has scope {unknown[0] if unknown else ''!r}; "
                f"allowed: {', '.join(SCOPES)}; {_FIX}"
            )
        if not _DIGEST.fullmatch(digest):
            raise ValueError(
                f"{label} ({name}) does not end in 64 lowercase hex digits (a SHA-256); {_FIX}"
            )
        if name in seen:
            raise ValueError(f"{label} repeats the name {name!r}; give each key its own; {_FIX}")
        seen.add(name)
        keys.append(ApiKey(name, frozenset(wanted), bytes.fromhex(digest)))
    return keys


def mint(name: str, scopes: list[str]) -> tuple[str, str]:
    """A new secret and the ``LAMBDAREC_API_KEYS`` entry that admits it."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    entry = f"{name}:{'+'.join(dict.fromkeys(scopes))}:{hash_secret(secret)}"
    parse_entries(entry)  # the same check the settings make
    return secret, entry
