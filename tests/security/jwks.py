"""A real JWKS endpoint on loopback (http.server in a thread) serving freshly generated RSA and
EC keys, and a token factory that signs with them, or forges what an attacker would send."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://idp.test/realms/k1s0"
AUDIENCE = "saga-server"
ROLES = ("sys_auditor", "sys_operator", "sys_admin")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwk(kid: str, key: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        data.update(alg="RS256")
    else:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        data.update(alg="ES256")
    data.update(kid=kid, use="sig")
    return dict(data)


class Keys:
    """Signing keys by kid: `rsa-1` and `ec-1` published, `rsa-2` (and `ec-2`) not, until
    `publish` is called."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {
            "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec-1": ec.generate_private_key(ec.SECP256R1()),
            "rsa-2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec-2": ec.generate_private_key(ec.SECP256R1()),
        }
        self.published = ["rsa-1", "ec-1"]

    def document(self) -> dict[str, Any]:
        return {"keys": [_jwk(kid, self.private[kid]) for kid in self.published]}

    def public_pem(self, kid: str) -> bytes:
        return bytes(
            self.private[kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    # ------------------------------------------------------------------ tokens

    def claims(
        self, roles: tuple[str, ...] | None = ("sys_admin",), sub: str = "alice", **extra: Any
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        if roles is not None:
            claims["realm_access"] = {"roles": list(roles)}
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        roles: tuple[str, ...] | None = ("sys_admin",),
        *,
        kid: str = "rsa-1",
        sub: str = "alice",
        **extra: Any,
    ) -> str:
        """A properly signed token (RS256 for rsa-*, ES256 for ec-*); `extra` claims override
        the defaults (None drops one)."""
        algorithm = "RS256" if kid.startswith("rsa") else "ES256"
        return jwt.encode(
            self.claims(roles, sub, **extra),
            self.private[kid],
            algorithm=algorithm,
            headers={"kid": kid},
        )

    def unsigned(self, kid: str = "rsa-1") -> str:
        """`alg: none` with an empty signature, admin roles claimed."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        return f"{header}.{_b64(json.dumps(self.claims()).encode())}."

    def hs256_with_public_key(self, kid: str = "rsa-1") -> str:
        """The classic algorithm confusion: HS256 keyed with the RSA public key's PEM."""
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = _b64(json.dumps(self.claims()).encode())
        mac = hmac.new(self.public_pem(kid), f"{header}.{body}".encode(), hashlib.sha256)
        return f"{header}.{body}.{_b64(mac.digest())}"

    def signed_with_header(self, header: dict[str, Any], signer: str = "rsa-1") -> str:
        """A token whose header says what `header` says, signed by `signer`'s key with the
        algorithm that key really uses (e.g. an ES256 signature under an RS256 header)."""
        algorithm = "RS256" if signer.startswith("rsa") else "ES256"
        real = jwt.encode(self.claims(), self.private[signer], algorithm=algorithm)
        _, body, signature = real.split(".")
        return f"{_b64(json.dumps(header).encode())}.{body}.{signature}"


class JwksServer:
    """Serves `keys.document()` (or the bytes in `raw`) at `/jwks` on 127.0.0.1; `failing`
    makes it answer 500; `hits` counts the GETs it received."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.failing = False
        self.raw: bytes | None = None  # served instead of the key set when set
        self.hits = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                with owner._lock:
                    owner.hits += 1
                if owner.failing or self.path != "/jwks":
                    self.send_error(500 if owner.failing else 404)
                    return
                body = owner.raw or json.dumps(owner.keys.document()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_port}/jwks"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.thread.join(timeout=10)
        self.http.server_close()

    @contextmanager
    def down(self) -> Iterator[None]:
        self.failing = True
        try:
            yield
        finally:
            self.failing = False


def auth_section(url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "jwks_url": url,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_cache_ttl_secs": 300,
        "leeway_secs": 5,
    } | overrides
