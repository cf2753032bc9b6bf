"""The refiner over gRPC: :class:`GrpcRefiner`, a :class:`spr.refinement.Refiner` that calls
``spr.v1.RefinerService/Refine``, and the one mapping between the core's refinement types and
the wire messages (used by this client and by the refiner's gRPC service alike).

The wire format carries visual features only (``refiner.proto`` has no modality field), so a
request for another modality is refused here rather than silently refined as video.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import numpy as np

from spr.api.v1 import moments_pb2, refiner_pb2, refiner_pb2_grpc
from spr.config import SecurityConfig
from spr.fusion import Contribution
from spr.grpc_security import client_metadata, open_channel
from spr.refinement import VISUAL, Moment, RefineCandidate, RefineFailed, Refinement, RefineRequest

log = logging.getLogger(__name__)

__all__ = [
    "CHANNEL_OPTIONS",
    "GrpcRefiner",
    "STATUS_OF_FAILURE",
    "moment_from_pb",
    "moment_to_pb",
    "refinement_from_pb",
    "refinement_to_pb",
    "request_from_pb",
    "request_to_pb",
]

# How the refiner service answers a RefineFailed, and how this client reads the status back.
STATUS_OF_FAILURE = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "internal": grpc.StatusCode.INTERNAL,
}
_FAILURE_OF_STATUS = {code: kind for kind, code in STATUS_OF_FAILURE.items()}

# Reconnect backoff of the channel to the refiner. grpcio's defaults (1 s, x1.6, up to 120 s)
# kept search degraded for 12 s after a restarted refiner listened again; capped at 1 s (and
# its 20 % jitter), the channel tries again within ~1.2 s.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# While refinement keeps failing the same way, one log line per this many seconds counts the
# skipped calls (besides the one line per change of state).
SKIP_LOG_EVERY_S = 60.0


class GrpcRefiner:
    """One long-lived channel to a refiner service (gRPC reconnects it by itself after an
    outage, within ~1.2 s of the refiner listening again: :data:`CHANNEL_OPTIONS`). Every call
    runs under ``timeout_ms`` unless the caller gives a shorter deadline; every failure (down,
    late, refusing) is a :class:`RefineFailed` naming the target.

    Skipped refinements are logged once per change of state (the first failure, a different
    kind of failure, the refiner answering again) plus one count every ``skip_log_every_s``
    while it keeps failing, never once per call."""

    def __init__(
        self,
        target: str,
        security: SecurityConfig | None = None,
        timeout_ms: float = 2000.0,
        *,
        skip_log_every_s: float = SKIP_LOG_EVERY_S,
    ) -> None:
        security = security if security is not None else SecurityConfig()
        self.target = target
        self.timeout_ms = float(timeout_ms)
        self._channel = open_channel(target, security, options=CHANNEL_OPTIONS)
        self._stub = refiner_pb2_grpc.RefinerServiceStub(self._channel)
        self._metadata = client_metadata(security)
        self._skips = _SkipLog(target, skip_log_every_s)

    def refine(self, request: RefineRequest, timeout_s: float | None = None) -> Refinement:
        if request.modality != VISUAL:
            raise RefineFailed(
                "invalid", f"the refiner at {self.target} reads {VISUAL} features only, not {request.modality!r}"
            )
        deadline_ms = self.timeout_ms if timeout_s is None else min(self.timeout_ms, max(timeout_s, 0.0) * 1e3)
        try:
            response = self._stub.Refine(request_to_pb(request), timeout=deadline_ms / 1e3, metadata=self._metadata)
        except grpc.RpcError as exc:
            failure = self._failure(exc, deadline_ms)
            self._skips.failed(failure)
            raise failure from None
        self._skips.answered()
        return refinement_from_pb(response)

    def _failure(self, exc: grpc.RpcError, deadline_ms: float) -> RefineFailed:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        kind = _FAILURE_OF_STATUS.get(code, "internal")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return RefineFailed(kind, f"refiner at {self.target} timed out after {deadline_ms:g} ms")
        if code == grpc.StatusCode.UNAVAILABLE:
            return RefineFailed(kind, f"refiner at {self.target} is unavailable: {_first_line(details)}")
        name = code.name if code is not None else "unknown error"
        return RefineFailed(kind, f"refiner at {self.target} failed with {name}: {_first_line(details)}")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GrpcRefiner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SkipLog:
    """The "refinement skipped" log of one refiner: a line when the state changes, a count
    every ``every_s`` seconds while it stays failing (thread-safe)."""

    def __init__(self, target: str, every_s: float) -> None:
        self._target = target
        self._every_s = every_s
        self._lock = threading.Lock()
        self._kind: str | None = None  # the failure kind while failing, None while answering
        self._skipped = 0  # skips since the last line
        self._total = 0  # skips since the state changed to failing
        self._since = 0.0  # time.monotonic() of the last line

    def failed(self, failure: RefineFailed) -> None:
        now = time.monotonic()
        extra = {"refiner": self._target, "failure": failure.kind}
        with self._lock:
            self._total = self._total + 1 if self._kind is not None else 1
            if failure.kind != self._kind:
                self._kind, self._skipped, self._since = failure.kind, 0, now
                log.warning(
                    "refinement skipped: %s (further skips are counted every %g s)", failure, self._every_s, extra=extra
                )
                return
            self._skipped += 1
            if now - self._since < self._every_s:
                return
            count, elapsed = self._skipped, now - self._since
            self._skipped, self._since = 0, now
        log.warning(
            "refinement skipped %d more times in the last %.0f s: %s", count, elapsed, failure, extra={**extra, "skipped": count}
        )

    def answered(self) -> None:
        if self._kind is None:  # the common case, without the lock
            return
        with self._lock:
            if self._kind is None:
                return
            total, self._kind, self._skipped = self._total, None, 0
            self._total = 0
        log.info(
            "refiner at %s answers again; %d refinements were skipped", self._target, total,
            extra={"refiner": self._target, "skipped": total},
        )


# --- core <-> wire -------------------------------------------------------------------------------


def moment_to_pb(moment: Moment) -> moments_pb2.Moment:
    return moments_pb2.Moment(
        video_key=moment.video_key,
        uri=moment.uri,
        start_s=moment.start_s,
        end_s=moment.end_s,
        score=moment.score,
        coarse_rank=moment.coarse_rank,
        coarse_start_s=moment.coarse_start_s,
        coarse_end_s=moment.coarse_end_s,
        video_duration_s=moment.video_duration_s,
        modalities=[
            moments_pb2.ModalityContribution(modality=c.modality, rank=c.rank, score=c.score) for c in moment.modalities
        ],
        snippet=moment.snippet,
        snippet_track=moment.snippet_track,
        video_id=moment.video_id,
        segment_id=moment.segment_id,
    )


def moment_from_pb(pb: moments_pb2.Moment) -> Moment:
    return Moment(
        video_key=pb.video_key,
        uri=pb.uri,
        start_s=pb.start_s,
        end_s=pb.end_s,
        score=pb.score,
        coarse_rank=pb.coarse_rank,
        coarse_start_s=pb.coarse_start_s,
        coarse_end_s=pb.coarse_end_s,
        video_duration_s=pb.video_duration_s,
        modalities=tuple(Contribution(c.modality, c.rank, c.score) for c in pb.modalities),
        snippet=pb.snippet,
        snippet_track=pb.snippet_track,
        video_id=pb.video_id,
        segment_id=pb.segment_id,
    )


def request_to_pb(request: RefineRequest) -> refiner_pb2.RefineRequest:
    return refiner_pb2.RefineRequest(
        query=moments_pb2.Embedding(values=np.asarray(request.query, dtype=np.float32).tolist()),
        proposals=[
            refiner_pb2.RefineProposal(
                video_id=c.video_id,
                video_key=c.video_key,
                start_s=c.start_s,
                end_s=c.end_s,
                coarse_rank=c.coarse_rank,
                video_duration_s=c.video_duration_s,
                uri=c.uri,
                coarse_start_s=c.coarse_start_s,
                coarse_end_s=c.coarse_end_s,
            )
            for c in request.candidates
        ],
        query_projected=request.query_projected,
        top_k=request.top_k,
    )


def request_from_pb(pb: refiner_pb2.RefineRequest) -> RefineRequest:
    """The wire request as the core's; its features are visual (the only ones on the wire)."""
    return RefineRequest(
        query=np.asarray(pb.query.values, dtype=np.float32),
        candidates=[
            RefineCandidate(
                video_id=p.video_id,
                video_key=p.video_key,
                uri=p.uri,
                start_s=p.start_s,
                end_s=p.end_s,
                coarse_rank=p.coarse_rank,
                video_duration_s=p.video_duration_s,
                coarse_start_s=p.coarse_start_s,
                coarse_end_s=p.coarse_end_s,
            )
            for p in pb.proposals
        ],
        query_projected=pb.query_projected,
        modality=VISUAL,
        top_k=pb.top_k,
    )


def refinement_to_pb(refinement: Refinement) -> refiner_pb2.RefineResponse:
    response = refiner_pb2.RefineResponse(
        model=refinement.model,
        random_weights=refinement.random_weights,
        dropped=refinement.dropped,
        batch_proposals=refinement.batch_proposals,
        batch_queries=refinement.batch_queries,
    )
    response.moments.extend(moment_to_pb(m) for m in refinement.moments)
    response.timings_ms.update(refinement.timings_ms)
    return response


def refinement_from_pb(pb: refiner_pb2.RefineResponse) -> Refinement:
    return Refinement(
        moments=[moment_from_pb(m) for m in pb.moments],
        model=pb.model,
        random_weights=pb.random_weights,
        dropped=pb.dropped,
        batch_proposals=pb.batch_proposals,
        batch_queries=pb.batch_queries,
        timings_ms=dict(pb.timings_ms),
    )


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line[:300]
