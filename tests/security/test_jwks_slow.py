"""A slow identity provider cannot stall the API: a JWKS fetch has an overall deadline (a
server trickling its answer byte by byte is cut off), and while a refresh hangs, tokens
signed by keys already cached verify at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.security.jwks import AUDIENCE, ISSUER, Keys
from workers.adapters.auth import (
    KeySet,
    KeysUnavailable,
    TokenVerifier,
    Unauthenticated,
    fetch_jwks,
)
from workers.config import AuthConfig

TRICKLE_SECS = 0.2  # one byte this often: no single read ever waits long enough to time out


class SlowJwksServer:
    """Serves `keys.document()` at /jwks on 127.0.0.1; with `slow` set, it sends the headers
    at once and then the body one byte per TRICKLE_SECS, until `release()`."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.slow = False
        self.released = threading.Event()
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                owner.hits += 1
                body = json.dumps(owner.keys.document()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                sent = 0
                while owner.slow and sent < len(body) and not owner.released.is_set():
                    self.wfile.write(body[sent : sent + 1])
                    self.wfile.flush()
                    sent += 1
                    owner.released.wait(TRICKLE_SECS)
                self.wfile.write(body[sent:])

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_port}/jwks"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.http.shutdown()
        self.thread.join(timeout=10)
        self.http.server_close()


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def slow_jwks(keys: Keys) -> Iterator[SlowJwksServer]:
    server = SlowJwksServer(keys)
    try:
        yield server
    finally:
        server.close()


def in_thread(work: Any, timeout: float) -> tuple[bool, float, Any]:
    """Run `work()` in a thread for at most `timeout` seconds: (finished, seconds, result or
    the exception it raised)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(work())
        except BaseException as exc:  # handed back to the test
            box.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), time.monotonic() - started, box[0] if box else None


def test_a_trickling_jwks_answer_is_cut_off_at_the_deadline(slow_jwks: SlowJwksServer) -> None:
    """A JWKS server that answers one byte at a time makes the fetch fail within its deadline,
    although no single read ever times out."""
    slow_jwks.slow = True
    finished, seconds, outcome = in_thread(lambda: fetch_jwks(slow_jwks.url, timeout=1.0), 6)
    assert finished, "the fetch was still reading after 6 s with a 1 s deadline"
    assert isinstance(outcome, KeysUnavailable), outcome
    assert seconds < 2.5
    slow_jwks.slow = False
    assert fetch_jwks(slow_jwks.url, timeout=1.0)["keys"]  # a normal answer still works


def test_known_keys_verify_at_once_while_a_refresh_hangs(
    slow_jwks: SlowJwksServer, keys: Keys
) -> None:
    """Past the TTL, with the JWKS server trickling, 20 concurrent tokens signed by cached
    keys each verify within half a second, and a token needing an unknown key is refused
    with 401 within the fetch deadline instead of waiting for the server."""
    config = AuthConfig(jwks_url=slow_jwks.url, issuer=ISSUER, audience=AUDIENCE, leeway_secs=5)
    key_set = KeySet(
        slow_jwks.url,
        ttl_secs=0.5,
        min_refresh_secs=0.0,
        fetch=partial(fetch_jwks, timeout=1.5),
    )
    check = TokenVerifier(config, key_set)
    assert check.authenticate("Bearer " + keys.token()).sub == "alice"
    slow_jwks.slow = True
    time.sleep(0.6)  # the cached keys are now past their TTL

    # A token with an unknown kid starts a refresh that trickles.
    unknown = keys.token(kid="rsa-2")
    refusing = threading.Thread(
        target=in_thread, args=(lambda: check.authenticate("Bearer " + unknown), 10), daemon=True
    )
    refusing.start()
    time.sleep(0.2)

    known = [keys.token(kid="rsa-1"), keys.token(kid="ec-1")] * 10
    results: list[tuple[bool, float, Any]] = []
    threads = [
        threading.Thread(
            target=lambda t=token: results.append(
                in_thread(lambda: check.authenticate("Bearer " + t), 5)
            ),
            daemon=True,
        )
        for token in known
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == len(known)
    for finished, seconds, outcome in results:
        assert finished and seconds < 0.5, f"a known-key token took {seconds:.2f}s"
        assert outcome.sub == "alice", outcome

    finished, seconds, outcome = in_thread(lambda: check.authenticate("Bearer " + unknown), 10)
    assert finished, "a token with an unknown kid waited for the trickling server"
    assert isinstance(outcome, Unauthenticated) and "unavailable" in outcome.message, outcome
    assert seconds < 3.0
    refusing.join(timeout=10)
