"""Logging for every service: the service id on every line, `--censored` redaction, GELF for Graylog."""

from __future__ import annotations

import json
import logging
import re
import socket
import time

_PATH = re.compile(r"(?<![\w.:])(?:/[\w.@+-]+){2,}/?")
_SECRET = re.compile(r"(?i)(token|secret|password|authorization|bearer)([\"']?\s*[:=]\s*[\"']?|\s+)([^\s\"',}]+)")


def redact(text: str) -> str:
    """Remove filesystem paths and secret values from a log message."""
    text = _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    return _PATH.sub("<path>", text)


class _CensorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class _IdFilter(logging.Filter):
    def __init__(self, service_id: str) -> None:
        super().__init__()
        self.service_id = service_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.service_id = self.service_id
        return True


class GelfTcpHandler(logging.Handler):
    """Minimal GELF-over-TCP handler (null-byte framed JSON), reconnecting on failure."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.address = (host, port)
        self._sock: socket.socket | None = None

    def emit(self, record: logging.LogRecord) -> None:
        payload = {
            "version": "1.1",
            "host": socket.gethostname(),
            "short_message": self.format(record),
            "timestamp": time.time(),
            "level": {50: 2, 40: 3, 30: 4, 20: 6}.get(record.levelno, 7),
            "_service_id": getattr(record, "service_id", ""),
            "_logger": record.name,
        }
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self.address, timeout=2)
            self._sock.sendall(json.dumps(payload).encode() + b"\0")
        except OSError:
            self._sock = None  # Graylog unreachable: drop the line rather than block the service


def configure_logging(service_id: str, variant: list[str], censored: bool, debug: bool) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(service_id)s] %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if variant and variant[0] == "graylog":
        handlers.append(GelfTcpHandler(variant[1], int(variant[2])))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(_IdFilter(service_id))
        if censored:
            handler.addFilter(_CensorFilter())
        root.addHandler(handler)
    for noisy in ("uvicorn.access", "websockets", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn installs its own handlers; route them through ours so lines carry the id
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
