"""Schemathesis hooks for tests/suite/openapi.rs: every request carries a fresh token.

Tokens are minted here (HS256, the standard library only) with scope `publish` and a lifetime of
two seconds, so that a `GET /v1/stream` that the fuzzer opens ends by itself with
`token_expired` and its whole response can be checked against the document.
"""

import base64
import hashlib
import hmac
import json
import os
import time

import schemathesis

SECRET = os.environ["PGRELAY_SECRET"].split(",")[0].strip().encode()


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
