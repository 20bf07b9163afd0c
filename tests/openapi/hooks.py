"""Schemathesis hooks for tests/suite/openapi.rs: every request carries a fresh token.

Tokens are minted here (HS256, the standard library only) with scope `publish` and a lifetime of
two seconds, so that a `GET /v1/stream` that the fuzzer opens ends by itself with
`token_expired` and its whole response can be checked against the document.

The name rule also refuses some characters outside the Basic Multilingual Plane, which a JSON
Schema pattern cannot list portably (the document names them in the description of `Address`):
names drawn with them are left out here. The test passes their ranges from the relay's own
table (`PGRELAY_REFUSED_OUTSIDE_BMP`, hexadecimal `first-last` pairs), so the two cannot drift.
"""

import base64
import hashlib
import hmac
import json
import os
import time

import schemathesis

SECRET = os.environ["PGRELAY_SECRET"].split(",")[0].strip().encode()
REFUSED_OUTSIDE_BMP = [
    tuple(int(bound, 16) for bound in pair.split("-"))
    for pair in os.environ["PGRELAY_REFUSED_OUTSIDE_BMP"].split(",")
]


def _names_refused_beyond_the_pattern(value) -> bool:
    """Whether a string (or a list of them) holds a character the patterns cannot list."""
    if isinstance(value, list):
        return any(_names_refused_beyond_the_pattern(item) for item in value)
    return isinstance(value, str) and any(
        first <= ord(c) <= last for c in value for first, last in REFUSED_OUTSIDE_BMP
    )


@schemathesis.hook
def filter_query(ctx, query):
    return not (query and _names_refused_beyond_the_pattern(list(query.values())))


@schemathesis.hook
def filter_body(ctx, body):
    return not (
        isinstance(body, dict) and _names_refused_beyond_the_pattern(body.get("participants"))
    )


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(sub: str, lifetime: int) -> str:
    header = _segment(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _segment(
        json.dumps({"sub": sub, "exp": int(time.time()) + lifetime, "scope": "publish"}).encode()
    )
    signature = hmac.new(SECRET, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_segment(signature)}"


@schemathesis.auth(refresh_interval=None)
class FreshToken:
    """A new two-second token for every request."""

    def get(self, case, context):
        return mint("fuzzer", 2)

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
