"""Docker HEALTHCHECK probe (slim images have no curl): exit 0 when URL answers 2xx in time.

    python /usr/local/bin/synergos-healthcheck http://127.0.0.1:5000/health [CREDENTIALS_DIR]

With credentials (SYNERGOS_CREDENTIALS, else CREDENTIALS_DIR, holding ca.pem) and without
SYNERGOS_INSECURE, the probe speaks HTTPS and trusts only the collaboration CA; /health needs no
client certificate.
"""
import os
import ssl
import sys
import urllib.request
from pathlib import Path

TIMEOUT_S = 4


def main(url: str, credentials: str | None = None) -> int:
    folder = os.environ.get("SYNERGOS_CREDENTIALS") or credentials
    insecure = os.environ.get("SYNERGOS_INSECURE", "").lower() in {"1", "true", "yes"}
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]  # never via a proxy
    if folder and not insecure and (Path(folder) / "ca.pem").is_file():
        context = ssl.create_default_context(cafile=str(Path(folder) / "ca.pem"))
        context.check_hostname = False  # the CA identifies the service, not the address
        handlers.append(urllib.request.HTTPSHandler(context=context))
        url = url.replace("http://", "https://", 1)
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            return 0 if 200 <= response.status < 300 else 1
    except Exception as exc:  # HTTP error status, refused, timed out: all mean unhealthy
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
