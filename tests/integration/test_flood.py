"""Health under load: slow and idle connections degrade only the client that holds them."""

from __future__ import annotations

import socket
import ssl
import time

from .conftest import REST, WORKER_HOSTS, WS, http, tls

W1 = WORKER_HOSTS["worker_1"]
IDLE, SLOW = 400, 100  # bounded: what one flooding client opens on loopback


def _idle(host: str, port: int, count: int) -> list[socket.socket]:
    """TCP connections that never start TLS (nor anything else)."""
    return [socket.create_connection((host, port), timeout=5) for _ in range(count)]


def _slow(host: str, port: int, count: int) -> list[ssl.SSLSocket]:
    """TLS connections holding a certificate that send half a request line and then nothing."""
    ctx = tls("flooder", "ttp")
    held = []
    for _ in range(count):
        conn = ctx.wrap_socket(socket.create_connection((host, port), timeout=5))
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        held.append(conn)
    return held


def _closed_by_server(conn: ssl.SSLSocket) -> bool:
    conn.settimeout(0.5)
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False  # still open
    except (ssl.SSLError, ConnectionError):
        return True


def test_health_and_training_answer_under_a_flood_of_slow_connections(grid):
    held: list[socket.socket] = []
    try:
        held += _idle(W1, REST, IDLE) + _idle(W1, WS, IDLE // 4)
        held += _slow(W1, REST, SLOW)
        started = time.monotonic()
        resp = http("ttp", "ttp").get(f"https://{W1}:{REST}/health", timeout=10)
        assert resp.status_code == 200 and resp.json()["data"]["status"] == "ok"
        assert time.monotonic() - started < 5
        # and a poll, which the TTP needs for training, is served too
        body = {"action": "classify", "tags": {"train": [["breast_cancer", "train"]]}}
        assert http("ttp", "ttp").post(f"https://{W1}:{REST}/worker/poll/flood/p", json=body).status_code == 200
        # a connection that never finishes its request is dropped after the header timeout: the
        # flooder loses them all, and only the flooder
        time.sleep(11)
        slow = [c for c in held if isinstance(c, ssl.SSLSocket)]
        assert slow and all(_closed_by_server(c) for c in slow)
    finally:
        for conn in held:
            conn.close()
