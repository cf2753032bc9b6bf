#!/usr/bin/env python3
"""Run the refiner alone: the refiner image's entrypoint (one GPU Deployment per cluster).

``spr serve`` starts the search service as well (and ``--no-refiner`` only the search service), so
the refiner Deployment runs this instead: load the configuration like every ``spr`` command
(``$SPR_CONFIG``, then ``SPR_*`` variables), configure logging, and serve
``spr.v1.RefinerService`` on ``services.host``:``services.refiner_port`` until SIGTERM, which
drains in-flight calls first (``spr.refine.service.serve_refiner(block=True)``).

Exit codes follow ``spr``: 2 for a configuration error, a traceback for a crash.
"""

from __future__ import annotations

import sys


def main() -> int:
    from spr.config import ConfigError, load_config
    from spr.logs import configure_logging

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"serve_refiner: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.logging)

    from spr.refine.service import serve_refiner

    serve_refiner(config, block=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
