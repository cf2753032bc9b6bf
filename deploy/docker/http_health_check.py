#!/usr/bin/env python3
"""Health check of the web gateway (``spr web``), for Docker ``HEALTHCHECK``.

GETs ``http://127.0.0.1:<web.port>/healthz`` (``--ready``: ``/readyz``, which also asks the
search service) and exits 0 on HTTP 200, 1 otherwise. The port is the configured one
(``SPR_*`` variables, ``$SPR_CONFIG``), as the gateway reads it. Kubernetes probes the same
paths with its own ``httpGet`` probes; this script is for Docker and compose, whose images
have no curl.

    python /opt/spr/bin/http_health_check.py
    python /opt/spr/bin/http_health_check.py --ready
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="http_health_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to dial (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: the configured web.port)")
    parser.add_argument("--ready", action="store_true", help="check /readyz (the search service too), not /healthz")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)

    from spr.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"http_health_check: configuration error: {exc}", file=sys.stderr)
        return 1
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port or config.web.port}/{'readyz' if args.ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status, body = response.status, response.read(1024)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(1024)
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {status} {body.decode('utf-8', 'replace').strip()}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
