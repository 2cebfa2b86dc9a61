"""Bearer-token authentication and role checks (SPEC §4 roles), shared by REST and gRPC.

`TokenVerifier.from_config(config.auth)` checks a JWT against the keys of a JWKS endpoint and
`authorize(header, access)` turns an `Authorization` value into a `Principal` or raises
`Unauthenticated` (401 / UNAUTHENTICATED) or `Forbidden` (403 / PERMISSION_DENIED).

What it must never do:
- accept an algorithm outside RS256/ES256 (`none`, HS*, or an RSA key used with an EC algorithm
  and the reverse): the algorithm comes from the allow-list and must match the key's own type;
- let a flood of tokens with unknown `kid`s hammer the JWKS server: an unknown `kid` refreshes
  the key set at most once per `MIN_REFRESH_SECS`, one fetch at a time;
- hang a request on a dead or slow JWKS server: a fetch has an overall deadline
  (`FETCH_TIMEOUT_SECS` for connecting, the headers and the whole body), runs on its own thread
  without holding the key-set lock, and only a request that needs a key not cached waits for
  it, never past that deadline; a token whose key is cached verifies at once, even past the
  TTL while a refresh is in flight. After a failure the next attempt waits `MIN_REFRESH_SECS`.

JWKS outage (a design choice): keys already fetched stay in use past their TTL while the
server is down (stale-while-error), so an outage breaks nothing for known keys. A token that
needs keys we do not have while the JWKS server cannot be reached is a 401 with a message
saying the signing keys are unavailable (the client cannot be authenticated; 503 would blame
the whole API), and the fetch failure is logged as an error for the operator.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import jwt

from workers.config import AuthConfig

log = logging.getLogger("saga.auth")

# Access levels a route or RPC may need (the REST ROUTES table and the gRPC servicer use them).
PUBLIC, READ, WRITE, ADMIN = "public", "read", "write", "admin"

AUDITOR, OPERATOR, SYS_ADMIN = "sys_auditor", "sys_operator", "sys_admin"
# Who may do what: auditors read, operators read and write, admins everything.
ROLES_FOR: Mapping[str, frozenset[str]] = {
    READ: frozenset({AUDITOR, OPERATOR, SYS_ADMIN}),
    WRITE: frozenset({OPERATOR, SYS_ADMIN}),
    ADMIN: frozenset({SYS_ADMIN}),
}

# The only algorithms accepted, with the key type (and curve) each one needs.
ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "ES256": ("EC", "P-256"),
}

MAX_TOKEN_CHARS = 8192  # longer than any sane JWT; refused before any parsing
MAX_JWKS_BYTES = 1024 * 1024
MAX_SUBJECT_CHARS = 255  # `sub` becomes `initiated_by`, a VARCHAR(255)
FETCH_TIMEOUT_SECS = 3.0
MIN_REFRESH_SECS = 5.0


class AuthError(Exception):
    """A refused call; `message` is safe to show the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(AuthError):
    """No token, or a token that does not verify (401 SYS_AUTH_MISSING_CLAIMS)."""


class Forbidden(AuthError):
    """A valid token without the role the call needs (403 SYS_AUTH_PERMISSION_DENIED)."""


class KeysUnavailable(Exception):
    """The JWKS endpoint could not be read (the reason is in the message, for the log)."""


@attrs.frozen
class Principal:
    """Who is calling: the token's subject and its realm roles."""

    sub: str
    roles: frozenset[str]

    def may(self, access: str) -> bool:
        return access == PUBLIC or bool(self.roles & ROLES_FOR.get(access, frozenset()))


@attrs.frozen
class _Key:
    algorithm: str
    key: Any  # a `cryptography` public key


def fetch_jwks(url: str, timeout: float = FETCH_TIMEOUT_SECS) -> Mapping[str, Any]:
    """GET the JWKS document at `url` within `timeout` seconds in all (a server trickling its
    answer is cut off at the deadline); raise KeysUnavailable on any failure."""
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (config URL)
            read = getattr(response, "read1", response.read)  # read1: at most one wait per chunk
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise KeysUnavailable(f"{url}: no complete answer within {timeout:g}s")
                chunk = read(64 * 1024)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise KeysUnavailable(f"{url}: key set over {MAX_JWKS_BYTES} bytes")
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise KeysUnavailable(f"cannot fetch {url}: {exc}") from None
    raw = b"".join(chunks)
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise KeysUnavailable(f"{url}: not a JSON document") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysUnavailable(f"{url}: not a JWK set (no 'keys' list)")
    return document


def _parse_keys(document: Mapping[str, Any]) -> dict[str, _Key]:
    """The usable signing keys of a JWK set by `kid`; others are skipped (and logged)."""
    keys: dict[str, _Key] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        for algorithm, (kty, curve) in ALGORITHMS.items():
            if jwk.get("kty") != kty or (curve is not None and jwk.get("crv") != curve):
                continue
            if jwk.get("alg", algorithm) != algorithm:
                continue
            try:
                keys[jwk["kid"]] = _Key(algorithm, jwt.PyJWK(jwk, algorithm).key)
            except (jwt.PyJWKError, ValueError, TypeError) as exc:
                log.warning("JWKS key %r skipped: %s", jwk["kid"][:64], exc)
            break
    return keys


class KeySet:
    """The JWKS endpoint's keys, cached for `ttl_secs`, refreshed on an unknown `kid` at most
    once per `min_refresh_secs`, and kept (stale) while the endpoint is down.

    A refresh runs on its own thread, one at a time, and the lock is never held while it
    fetches. A key that is cached answers at once (past the TTL it also starts a refresh in
    the background); a key that is not waits for the refresh, at most `deadline_secs`."""

    def __init__(
        self,
        url: str,
        ttl_secs: float,
        *,
        min_refresh_secs: float = MIN_REFRESH_SECS,
        fetch: Callable[[str], Mapping[str, Any]] = fetch_jwks,
        clock: Callable[[], float] = time.monotonic,
        deadline_secs: float = FETCH_TIMEOUT_SECS,
    ) -> None:
        self._url = url
        self._ttl = ttl_secs
        self._min_refresh = min_refresh_secs
        self._fetch = fetch
        self._clock = clock
        self._deadline = deadline_secs
        self._lock = threading.Lock()  # guards the fields below, never held during a fetch
        self._keys: dict[str, _Key] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._error: str | None = None  # why the last attempt failed
        self._refreshing: threading.Event | None = None  # set when the refresh in flight ends
        self._refresh_ends_by = 0.0  # time.monotonic() past which nobody waits for it
        self.fetches = 0

    def get(self, kid: str) -> _Key | None:
        """The key named `kid`, or None if the endpoint does not have it; raise
        KeysUnavailable when it is not cached and the endpoint cannot be read in time."""
        key = self._keys.get(kid)
        if key is not None:
            fresh = self._fetched_at is not None and self._clock() - self._fetched_at < self._ttl
            if not fresh:
                self._start_refresh()  # in the background: the cached key answers now
            return key
        refresh = self._start_refresh()
        if refresh is not None:
            refresh.wait(max(0.0, self._refresh_ends_by - time.monotonic()))
        key = self._keys.get(kid)
        if key is None and refresh is not None and not refresh.is_set():
            raise KeysUnavailable(f"{self._url}: no answer within {self._deadline:g}s")
        if key is None and self._error is not None:
            # The endpoint is down: an unknown kid may be a key we could not fetch.
            raise KeysUnavailable(self._error)
        return key

    def prefetch(self) -> None:
        """Fetch the keys now (at start-up, waiting at most the fetch deadline), so the first
        request does not wait and a wrong `jwks_url` shows in the log at once; a failure is
        logged, never raised."""
        with self._lock:
            if self._tried_at is not None:
                return
        refresh = self._start_refresh()
        if refresh is not None:
            refresh.wait(max(0.0, self._refresh_ends_by - time.monotonic()))

    def _start_refresh(self) -> threading.Event | None:
        """The refresh in flight, or a new one; None when the last attempt was too recent."""
        with self._lock:
            if self._refreshing is not None:
                return self._refreshing
            now = self._clock()
            if self._tried_at is not None and now - self._tried_at < self._min_refresh:
                return None
            self._tried_at = now
            self.fetches += 1
            done = threading.Event()
            self._refreshing = done
            self._refresh_ends_by = time.monotonic() + self._deadline
        threading.Thread(
            target=self._refresh, args=(now, done), name="jwks-refresh", daemon=True
        ).start()
        return done

    def _refresh(self, started: float, done: threading.Event) -> None:
        try:
            keys = _parse_keys(self._fetch(self._url))
        except KeysUnavailable as exc:
            with self._lock:
                self._error = str(exc)
                cached = len(self._keys)
            log.error(
                "JWKS fetch failed (%s); %s",
                exc,
                f"keeping {cached} cached keys" if cached else "no keys cached",
            )
        except Exception as exc:  # a bug must not leave the refresh in flight for ever
            with self._lock:
                self._error = f"cannot use {self._url}: {exc}"
            log.exception("JWKS refresh failed")
        else:
            with self._lock:
                self._error = None
                self._keys = keys
                self._fetched_at = started
            log.info("JWKS: %d signing keys from %s", len(keys), self._url)
        finally:
            with self._lock:
                self._refreshing = None
            done.set()


class TokenVerifier:
    """Checks bearer tokens against one issuer, audience and key set."""

    def __init__(self, config: AuthConfig, keys: KeySet | None = None) -> None:
        self.config = config
        self.keys = keys or KeySet(config.jwks_url, config.jwks_cache_ttl_secs)

    @classmethod
    def from_config(cls, config: AuthConfig, *, prefetch: bool = True) -> TokenVerifier:
        """A verifier for `config`, its keys fetched now unless `prefetch` is False."""
        verifier = cls(config)
        if prefetch:
            verifier.keys.prefetch()
        return verifier

    def authorize(self, authorization: str | None, access: str) -> Principal | None:
        """The caller of a request with this `Authorization` value, allowed `access`; None
        for a PUBLIC call; raise Unauthenticated or Forbidden otherwise."""
        if access == PUBLIC:
            return None
        principal = self.authenticate(authorization)
        if not principal.may(access):
            needed = " or ".join(sorted(ROLES_FOR.get(access, frozenset())))
            raise Forbidden(f"this call needs the role {needed or 'none'}")
        return principal

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of a valid `Bearer <jwt>` value; raise Unauthenticated otherwise."""
        token = bearer_token(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated(
                f"token algorithm {str(algorithm)[:16]!r} is not allowed (RS256 or ES256)"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise Unauthenticated("token header has no key id (kid)")
        try:
            key = self.keys.get(kid)
        except KeysUnavailable:
            raise Unauthenticated(
                "cannot verify the token: the signing keys are unavailable right now"
            ) from None
        if key is None:
            raise Unauthenticated("token is signed with an unknown key (kid)")
        if key.algorithm != algorithm:
            raise Unauthenticated(f"token algorithm {algorithm} does not match its key")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[key.algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_secs,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the {exc.claim} claim") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token has the wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token has the wrong audience") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token is invalid: {str(exc)[:200]}") from None
        return Principal(_subject(claims), _roles(claims))


def bearer_token(authorization: str | None) -> str:
    """The token of a `Bearer <token>` value; raise Unauthenticated when there is none."""
    if not authorization:
        raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
    if len(authorization) > MAX_TOKEN_CHARS:
        raise Unauthenticated("bearer token is too long")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
    if not token.isascii() or not token.isprintable():
        raise Unauthenticated("bearer token is not a JWT")
    return token


def _subject(claims: Mapping[str, Any]) -> str:
    sub = claims.get("sub")
    if (
        not isinstance(sub, str)
        or not sub.strip()
        or len(sub) > MAX_SUBJECT_CHARS
        or not sub.isprintable()
    ):
        raise Unauthenticated(
            f"token sub claim must be a printable string of 1..{MAX_SUBJECT_CHARS} characters"
        )
    return sub


def _roles(claims: Mapping[str, Any]) -> frozenset[str]:
    realm = claims.get("realm_access")
    roles = realm.get("roles") if isinstance(realm, dict) else None
    if not isinstance(roles, list):
        return frozenset()
    return frozenset(role for role in roles if isinstance(role, str))
