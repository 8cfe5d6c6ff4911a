"""Docker HEALTHCHECK probe (slim images have no curl): exit 0 when URL answers 2xx in time.

    python /usr/local/bin/synergos-healthcheck http://127.0.0.1:5000/health
"""
import sys
import urllib.request

TIMEOUT_S = 4


def main(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            return 0 if 200 <= response.status < 300 else 1
    except Exception as exc:  # HTTP error status, refused, timed out: all mean unhealthy
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
