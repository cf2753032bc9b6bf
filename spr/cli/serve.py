"""``spr serve`` (the search service and the refiner), ``spr refiner`` (the refiner alone) and
``spr search`` (a query from the shell).

Nothing heavy is imported at module level: ``spr version`` must not load grpc or torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

# Seconds in-flight calls get to finish on shutdown.
SHUTDOWN_GRACE_S = 5.0
# Addresses a server binds to that a client cannot dial: use loopback instead.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the search service and the refiner (gRPC, services.host) until Ctrl-C or SIGTERM",
        description="Start the refiner and the search service on services.host (loopback by default) "
        "and serve until interrupted. Ports default to services.search_port and services.refiner_port; "
        "0 picks free ones (printed at start-up).",
    )
    p.add_argument("--search-port", type=int, metavar="PORT", help="search service port (default: services.search_port)")
    p.add_argument("--refiner-port", type=int, metavar="PORT", help="refiner port (default: services.refiner_port)")
    p.add_argument("--no-refiner", action="store_true", help="serve coarse proposals only, without a refiner")
    p.add_argument("--web", action="store_true", help="also serve the web page and its HTTP/JSON API (spr web)")
    p.add_argument("--web-port", type=int, metavar="PORT", help="web page port (default: web.port; 0 = a free one)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser(
        "refiner",
        help="run the refiner alone (gRPC, services.host) until Ctrl-C or SIGTERM",
        description="Serve spr.v1.RefinerService on services.host:services.refiner_port (loopback by "
        "default) until interrupted; SIGTERM drains in-flight calls first. A search service reaches it "
        "through services.refiner_target (e.g. `SPR_SERVICES__REFINER_TARGET=127.0.0.1:50052 spr serve`). "
        "In its own process the refiner does not compete with the search service for the interpreter: "
        "under 50 clients that doubled throughput (105 vs 56 requests/s, docs/search.md).",
    )
    p.add_argument("--port", type=int, metavar="PORT", help="refiner port (default: services.refiner_port; 0 = a free one)")
    p.set_defaults(handler=cmd_refiner)
    from .refiner_context import add_precompute_command

    add_precompute_command(p)

    p = sub.add_parser(
        "web",
        help="serve the search page and its HTTP/JSON API, a client of a running search service",
        description="Serve the web page (type a sentence, see and play the moments) and the JSON API "
        "(/api/search, /api/videos/KEY, /media/KEY with HTTP Range, /thumbs/ID.jpg; OpenAPI at /docs) on "
        "web.host (loopback by default). It calls the search service over gRPC: --target, web.target, or "
        "services.host:search_port. With security.token set, people log in with the token and API clients "
        "send it as a bearer token.",
    )
    p.add_argument("--target", metavar="HOST:PORT", help="search service address (default: web.target or services.host:search_port)")
    p.add_argument("--port", type=int, metavar="PORT", help="HTTP port (default: web.port; 0 = a free one)")
    p.set_defaults(handler=cmd_web)

    p = sub.add_parser(
        "search",
        help="search moments with a text query through a running search service",
        description="Send one text query to the search service (`spr serve`) and print the ranked moments.",
    )
    p.add_argument("text", help="the query, e.g. \"a man opens a door\"")
    p.add_argument("--k", type=int, default=10, metavar="N", help="moments to return (1..1000, default 10)")
    p.add_argument("--collection", default="", help="collection to search (default: vectors.collection)")
    p.add_argument("--no-refine", action="store_true", help="return the coarse proposals without refinement")
    p.add_argument("--nprobe", type=int, default=0, metavar="N", help="IVF lists to probe (default: the index's)")
    p.add_argument("--video", action="append", default=[], metavar="KEY", help="only this video (repeatable)")
    p.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="only videos with this metadata (repeatable)"
    )
    p.add_argument(
        "--weight", action="append", default=[], metavar="MODALITY=W",
        help="fusion weight of visual, speech or subtitles (0 = off; repeatable; default: the service's)",
    )
    p.add_argument("--fusion", choices=("rrf", "sum"), default="", help="fusion method (default: the service's)")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.add_argument("--target", metavar="HOST:PORT", help="search service address (default: services.host:search_port)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="deadline of the call in seconds (default 30)")
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser(
        "demo",
        help="end to end on one machine: synthetic videos -> ingest -> both services -> gRPC queries",
        description="Write a small synthetic corpus, ingest it (local Ray, SQLite, Faiss by default), start the "
        "refiner and the search service on loopback, query them through the gRPC client and print the "
        "moments and per-stage timings. Says plainly when the weights are random.",
    )
    p.add_argument("--executor", choices=("ray", "inline"), default="ray", help="ingest on local Ray (default) or in-process")
    p.add_argument(
        "--web", action="store_true",
        help="afterwards keep the services running and serve the web page; prints its URL (Ctrl-C stops)",
    )
    p.add_argument("--web-port", type=int, metavar="PORT", help="web page port (default: web.port; 0 = a free one)")
    p.set_defaults(handler=cmd_demo)


# -- spr serve ----------------------------------------------------------------------------------


def cmd_serve(config: Any, args: argparse.Namespace) -> int:
    from spr.search.service import serve_search

    host = config.services.host
    refiner_server = None
    refiner_target = config.services.refiner_target or None
    if refiner_target:
        _say(f"refiner  remote at {refiner_target}")
    elif not args.no_refiner:
        from spr.refine.service import serve_refiner

        refiner_port = config.services.refiner_port if args.refiner_port is None else args.refiner_port
        with _port_in_use_is_usage("--refiner-port", "services.refiner_port"):
            refiner_server, bound_refiner = serve_refiner(config, port=refiner_port)
        refiner_target = f"{dialable_host(host)}:{bound_refiner}"
        _say(f"refiner  listening on {host}:{bound_refiner}")
    try:
        with _port_in_use_is_usage("--search-port", "services.search_port"):
            search_server, bound_search = serve_search(config, port=args.search_port, refiner_target=refiner_target)
    except BaseException:
        if refiner_server is not None:
            refiner_server.stop(0)
        raise
    _say(f"search   listening on {host}:{bound_search}" + ("" if refiner_target else "  (no refiner: coarse results)"))
    web_server = None
    if args.web:
        try:
            web_server = _start_web(config, f"{dialable_host(host)}:{bound_search}", args.web_port)
        except BaseException:
            search_server.stop(0)
            if refiner_server is not None:
                refiner_server.stop(0)
            raise
    _say("press Ctrl-C (or send SIGTERM) to stop")
    _wait_for_stop_signal()
    _say("shutting down: finishing in-flight calls")
    if web_server is not None:
        web_server.stop()
    search_server.stop(SHUTDOWN_GRACE_S).wait()
    if refiner_server is not None:
        refiner_server.stop(SHUTDOWN_GRACE_S).wait()
    _say("stopped")
    return 0


@contextlib.contextmanager
def _port_in_use_is_usage(option: str, setting: str) -> Iterator[None]:
    """A gRPC port another process holds is the user's to fix: one line and exit 2 (UsageError),
    as for the web gateway's port."""
    from spr.errors import UsageError
    from spr.grpc_security import PortInUse

    try:
        yield
    except PortInUse as exc:
        raise UsageError(f"{exc}; is another `spr serve` running? pass {option} (0 picks a free one) or set {setting}") from None


# -- spr refiner --------------------------------------------------------------------------------


def cmd_refiner(config: Any, args: argparse.Namespace) -> int:
    from spr.refine.service import serve_refiner

    with _port_in_use_is_usage("--port", "services.refiner_port"):
        server, bound = serve_refiner(config, port=args.port)
    _say(f"refiner  listening on {config.services.host}:{bound}")
    _say(f"         search services reach it with services.refiner_target = \"{dialable_host(config.services.host)}:{bound}\"")
    _say("press Ctrl-C (or send SIGTERM) to stop")
    _wait_for_stop_signal()
    _say("shutting down: finishing in-flight calls")
    server.stop(SHUTDOWN_GRACE_S).wait()
    _say("stopped")
    return 0


# -- spr web ------------------------------------------------------------------------------------


def cmd_web(config: Any, args: argparse.Namespace) -> int:
    target = args.target or config.web.target or f"{dialable_host(config.services.host)}:{config.services.search_port}"
    server = _start_web(config, target, args.port)
    _say("press Ctrl-C (or send SIGTERM) to stop")
    _wait_for_stop_signal()
    server.stop()
    _say("stopped")
    return 0


def _start_web(config: Any, target: str, port: int | None) -> Any:
    """The web gateway against the search service at ``target``, started; says where it is."""
    from spr.errors import UsageError
    from spr.search.web import PortInUse, serve_web

    try:
        server = serve_web(config, port=port, target=target)
    except PortInUse as exc:
        raise UsageError(f"{exc}; pass --web-port/--port (0 picks a free one) or set web.port") from None
    _say(f"web      {server.url}  (search service at {target})")
    if config.security.token:
        _say("         the page asks for security.token; API clients send 'Authorization: Bearer <token>'")
    return server


def _wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM; the previous handlers are restored afterwards."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A timed wait keeps the main thread returning to the interpreter, where signal
        # handlers run.
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(line: str) -> None:
    # stdout, flushed: scripts (and tests) read the bound ports from it while the server runs.
    print(line, flush=True)


# -- spr demo -----------------------------------------------------------------------------------


def cmd_demo(config: Any, args: argparse.Namespace) -> int:
    from spr.cli.demo import print_report, run_demo

    serving = None
    if args.web:
        def serving(search_target: str, report: Any) -> None:
            # The services stay up while people use the page; the report comes first so the URL
            # is the last thing on the screen.
            print_report(report, sys.stdout)
            server = _start_web(config, search_target, args.web_port)
            _say(f"open {server.url} and search, e.g. \"the budget for next year\"; press Ctrl-C to stop")
            try:
                _wait_for_stop_signal()
            finally:
                server.stop()

    report = run_demo(config, executor=args.executor, out=sys.stdout, serving=serving)
    if serving is None:
        print_report(report, sys.stdout)
    # The planted events are found from their own frame features whatever the weights, and what
    # is said and written with real weights: a miss means the pipeline is broken.
    return 0 if report.ok else 1


# -- spr search ---------------------------------------------------------------------------------


def cmd_search(config: Any, args: argparse.Namespace) -> int:
    import grpc

    from spr.search.client import SearchClient
    from spr.errors import UsageError

    metadata = _parse_meta(args.meta)
    target = args.target or f"{dialable_host(config.services.host)}:{config.services.search_port}"
    try:
        with SearchClient(target, config.security, timeout_s=args.timeout) as client:
            response = client.search(
                text=args.text,
                top_k=args.k,
                collection=args.collection,
                nprobe=args.nprobe,
                video_keys=args.video,
                metadata=metadata,
                refine=False if args.no_refine else None,
                weights=_parse_weights(args.weight),
                fusion=args.fusion,
            )
    except grpc.RpcError as exc:
        message = _rpc_error_message(exc, target)
        if message is None:
            # The service's own failure (INTERNAL, ...): its message names the incident to look
            # up in its log; a client-side traceback would only add noise.
            print(f"spr: error: the search service failed with {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        raise UsageError(message) from None
    if args.json:
        print(json.dumps(response_json(response), indent=2))
    else:
        print_response(response)
    return 0


def _parse_weights(pairs: list[str]) -> dict[str, float]:
    from spr.errors import UsageError

    weights = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--weight takes MODALITY=NUMBER (e.g. speech=1), got {pair!r}") from None
        if not sep or not name.strip():
            raise UsageError(f"--weight takes MODALITY=NUMBER (e.g. speech=1), got {pair!r}")
    return weights


def _parse_meta(pairs: list[str]) -> dict[str, str]:
    from spr.errors import UsageError

    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta takes KEY=VALUE, got {pair!r}")
        metadata[key] = value
    return metadata


def _rpc_error_message(exc: Any, target: str) -> str | None:
    """A one-line message for failures the user can act on; None for the service's own errors."""
    import grpc

    code = exc.code()
    details = (exc.details() or "").strip()
    if code == grpc.StatusCode.UNAVAILABLE:
        why = details.splitlines()[0] if details else "unavailable"
        return f"no search service at {target}; start one with `spr serve` ({why})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the search service at {target} did not answer in time; try a larger --timeout"
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
    ):
        return details or code.name.lower()
    return None


def dialable_host(host: str) -> str:
    """The address a local client dials for a server bound to ``host`` (wildcards -> loopback)."""
    return "127.0.0.1" if host in _WILDCARD_HOSTS else host


def print_response(response: Any) -> None:
    """The moments as a table, then the flags, per-stage timings and a random-weights note."""
    from spr.cli import hms

    moments = list(response.moments)
    if not moments:
        print(f"no moments found in collection {response.collection!r}")
    else:
        width = min(40, max(5, *(len(m.video_key) for m in moments)))
        print(f"{'#':>3}  {'video':<{width}}  {'start':>10}  {'end':>10}  {'score':>7}  {'coarse':>6}  found by")
        for rank, m in enumerate(moments):
            video = m.video_key if len(m.video_key) <= width else m.video_key[: width - 1] + "…"
            found_by = ",".join(c.modality for c in m.modalities)
            print(
                f"{rank:>3}  {video:<{width}}  {hms(m.start_s):>10}  {hms(m.end_s):>10}  "
                f"{m.score:>7.3f}  {m.coarse_rank:>6}  {found_by}"
            )
            if m.snippet:
                print(f"     {m.snippet_track}: \u201c{m.snippet}\u201d")
    state = "refined" if response.refined else "coarse (not refined)"
    if response.degraded:
        state = f"DEGRADED: coarse proposals only ({response.degraded_reason})"
    print(
        f"\n{state}; {response.segments_retrieved} segments -> {response.proposals} proposals "
        f"in collection {response.collection!r}"
    )
    if response.refine_note:
        print(response.refine_note)
    for m in response.modalities:
        if m.searched:
            print(f"modality {m.modality}: searched, weight {m.weight:g}, {m.hits} hits ({response.fusion or 'rrf'})"
                  + (f"; {m.note}" if m.note else ""))
        else:
            print(f"modality {m.modality}: not searched: {m.note}")
    order = ("embed", "filter", "ann", "fusion", "catalog", "proposals", "refine", "snippets", "total")
    timings = dict(response.timings_ms)
    shown = [k for k in order if k in timings] + sorted(set(timings) - set(order))
    print("timings: " + ", ".join(f"{k} {timings[k]:.1f} ms" for k in shown))
    if response.random_weights:
        print(
            "note: the visual modality or the refiner runs on untrained or random weights (CLIP, projector or "
            "refiner): their rankings are not meaningful"
        )


def response_json(response: Any) -> dict[str, Any]:
    """The response as plain JSON types, field names as in the proto."""
    return {
        "collection": response.collection,
        "refined": response.refined,
        "degraded": response.degraded,
        "degraded_reason": response.degraded_reason,
        "random_weights": response.random_weights,
        "segments_retrieved": response.segments_retrieved,
        "proposals": response.proposals,
        "timings_ms": dict(response.timings_ms),
        "moments": [
            {
                "rank": rank,
                "video_key": m.video_key,
                "uri": m.uri,
                "start_s": m.start_s,
                "end_s": m.end_s,
                "score": m.score,
                "coarse_rank": m.coarse_rank,
                "coarse_start_s": m.coarse_start_s,
                "coarse_end_s": m.coarse_end_s,
                "video_duration_s": m.video_duration_s,
                "modalities": [{"modality": c.modality, "rank": c.rank, "score": c.score} for c in m.modalities],
                "snippet": m.snippet,
                "snippet_track": m.snippet_track,
            }
            for rank, m in enumerate(response.moments)
        ],
        "fusion": response.fusion,
        "refine_note": response.refine_note,
        "modalities": [
            {
                "modality": m.modality, "collection": m.collection, "weight": m.weight, "searched": m.searched,
                "hits": m.hits, "note": m.note, "random_weights": m.random_weights,
            }
            for m in response.modalities
        ],
    }
