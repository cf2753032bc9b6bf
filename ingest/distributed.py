"""The distributor: Ray actors that encode, fed by Ray tasks that decode.

Decoding, not CLIP, is the bottleneck of video ingest, so it runs in separate CPU tasks
(:func:`_decode_task`, a Ray streaming generator yielding frame chunks) while each
:class:`_EncoderActor` holds one copy of the model (``num_gpus`` per actor on GPU nodes,
CPU actors otherwise). An actor serves several videos at once (threads): while one video's
chunks are being decoded elsewhere, another's are on the model. Memory stays bounded twice:
a decode task runs at most a few chunks ahead of its consumer (generator backpressure), and
the runner keeps at most ``max_videos_in_flight`` videos submitted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from .encoder import (
    EncodedVideo,
    EncoderInfo,
    EncoderSettings,
    FailedVideo,
    SkippedVideo,
    VideoEncoder,
    decode_chunks,
    hash_or_skip,
)
from .sources import VideoSource
from .tracks import TextTrackEncoder, TrackSettings, transcribe_audio, transcribe_file, video_tracks

log = logging.getLogger(__name__)

# Chunks a decode task may run ahead of the encoder: enough to hide latency, small enough
# that an hour-long video never sits in the object store whole.
_DECODE_AHEAD_CHUNKS = 4
# Times a video is retried on a fresh encoder actor after the one running it crashed (OOM, a
# segfault in a codec, a killed worker) before it is recorded failed: a crash that follows the
# video every time is its own, the others were bad luck of being queued on that actor.
CRASH_RETRIES = 2


def start_ray(address: str = "", data_dir: str | os.PathLike[str] = "", num_cpus: int = 0) -> bool:
    """Connect to the cluster at ``address``, or start a local Ray (no dashboard, temp files
    under the data directory). Returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        return True
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        # A local Ray talks to itself over loopback only, never the host's public address.
        "_node_ip_address": "127.0.0.1",
    }
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if data_dir:
        kwargs["_temp_dir"] = ray_temp_dir(data_dir)
    try:
        ray.init(**kwargs)
    except Exception as exc:  # a busy host can miss Ray's start-up deadline; one more try
        log.warning("local Ray did not start (%s); retrying once", exc)
        ray.shutdown()
        ray.init(**kwargs)
    return True


def ray_temp_dir(data_dir: str | os.PathLike[str]) -> str:
    """``<data_dir>/ray``, unless that is too long: Ray's Unix sockets live under it and a
    socket path cannot exceed 107 bytes."""
    preferred = str(Path(data_dir).expanduser().resolve() / "ray")
    if len(preferred) <= 48:
        return preferred
    return f"/tmp/spr-ray-{hashlib.sha1(preferred.encode()).hexdigest()[:10]}"


def _decode_task(path: str, frame_rate: float, image_size: int, chunk_frames: int):
    yield from decode_chunks(path, frame_rate, image_size, chunk_frames)


def _audio_task(path: str, max_s: float | None):
    """A decode task for the ASR stage: the video's audio, mono float32 at 16 kHz (or None)."""
    from .speech import decode_audio

    return decode_audio(path, max_s=max_s)


class _SpeechActor:
    """The ASR stage: one faster-whisper model, fed audio by decode tasks."""

    def __init__(self, settings: Any) -> None:
        from .speech import SpeechTranscriber

        self.transcriber = SpeechTranscriber(settings)

    def transcribe(self, audio: Any) -> tuple[Any, str]:
        return transcribe_audio(self.transcriber, audio)


class _EncoderActor:
    """One model copy; ``process`` runs in up to ``max_concurrency`` threads."""

    def __init__(
        self,
        settings: EncoderSettings,
        decode_cpus: float,
        tracks: TrackSettings | None = None,
        max_audio_s: float | None = None,
        speech_actor_names: tuple[str, ...] = (),
    ) -> None:
        import ray

        self.encoder = VideoEncoder(settings)
        self.decode = ray.remote(num_cpus=decode_cpus)(_decode_task)
        # Audio decoding is light next to frames; a small share keeps it from waiting for them.
        self.decode_audio = ray.remote(num_cpus=min(decode_cpus, 0.25))(_audio_task)
        self.tracks = TextTrackEncoder(tracks) if tracks is not None else None
        # The ASR actors by name, not by handle: handles among the constructor's arguments
        # would tie this actor's restarts to the object store (ray#53727); a name survives.
        wanted = tracks is not None and tracks.speech
        self.speech_actors = [ray.get_actor(name) for name in speech_actor_names] if wanted else []
        self.max_audio_s = max_audio_s
        self._next = 0

    def info(self) -> EncoderInfo:
        return self.encoder.info

    def process(self, source: VideoSource, skip_if_hash: str | None) -> EncodedVideo | FailedVideo | SkippedVideo:
        import ray

        digest = hash_or_skip(source, skip_if_hash)
        if not isinstance(digest, str):
            return digest
        s = self.encoder.settings
        stream = self.decode.options(_generator_backpressure_num_objects=_DECODE_AHEAD_CHUNKS).remote(
            source.path, s.frame_rate, self.encoder.image_size, s.chunk_frames
        )
        speech_ref = None
        if self.speech_actors:
            # The ASR stage runs beside the frames: decode task -> speech actor, no round trip here.
            actor = self.speech_actors[self._next % len(self.speech_actors)]
            self._next += 1
            speech_ref = actor.transcribe.remote(self.decode_audio.remote(source.path, self.max_audio_s))
        try:
            probe = ray.get(next(stream))
            encoded = self.encoder.encode_video(source, probe, (ray.get(ref) for ref in stream), digest)
        except Exception as exc:  # a DecodeError arrives wrapped in a RayTaskError
            if speech_ref is not None:
                ray.cancel(speech_ref)
            cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause else exc
            return FailedVideo(source, str(cause) if "DecodeError" in type(cause).__name__ else f"{type(cause).__name__}: {cause}", digest)
        if self.tracks is None:
            return encoded
        speech = None
        if speech_ref is not None:
            try:
                speech = ray.get(speech_ref)
            except Exception as exc:  # the audio task or the ASR actor failed: this track alone
                cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause else exc
                speech = (None, f"speech track failed: {cause}")
        return _replace(encoded, tracks=video_tracks(self.tracks, source, encoded.duration_s, speech))


class InlineEncoderPool:
    """Everything in this process: the same stages, no Ray. For small jobs and unit tests."""

    def __init__(
        self, settings: EncoderSettings, tracks: TrackSettings | None = None, speech: Any = None,
        max_audio_s: float | None = None,
    ) -> None:
        self._encoder = VideoEncoder(settings)
        self._tracks = TextTrackEncoder(tracks) if tracks is not None else None
        self._speech = None
        if tracks is not None and tracks.speech and speech is not None:
            from .speech import SpeechTranscriber

            self._speech = SpeechTranscriber(speech)
        self._max_audio_s = max_audio_s
        self._done: list[Any] = []

    @property
    def capacity(self) -> int:
        return 1

    def info(self) -> EncoderInfo:
        return self._encoder.info

    def submit(self, source: VideoSource, skip_if_hash: str | None) -> None:
        result = self._encoder.process(source, skip_if_hash)
        if isinstance(result, EncodedVideo) and self._tracks is not None:
            speech = transcribe_file(self._speech, source.path, self._max_audio_s) if self._speech is not None else None
            result = _replace(result, tracks=video_tracks(self._tracks, source, result.duration_s, speech))
        self._done.append(result)

    def in_flight(self) -> int:
        return len(self._done)

    def wait(self, timeout_s: float) -> list[Any]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass


class RayEncoderPool:
    """``actors`` encoder actors, each taking up to ``videos_per_actor`` videos at a time.

    An actor that crashes is replaced by a fresh one (which loads the model again), and every
    video that was running or queued on it is submitted again, at most ``crash_retries`` times
    per video, before it is recorded failed."""

    def __init__(
        self,
        settings: EncoderSettings,
        actors: int = 1,
        videos_per_actor: int = 2,
        gpus_per_actor: float = 1.0,
        cpus_per_actor: float = 1.0,
        decode_cpus: float = 1.0,
        tracks: TrackSettings | None = None,
        speech: Any = None,
        speech_actors: int = 1,
        speech_gpus_per_actor: float = 0.5,
        max_audio_s: float | None = None,
        crash_retries: int = CRASH_RETRIES,
    ) -> None:
        import ray

        resources = ray.cluster_resources()
        use_gpus = resources.get("GPU", 0) > 0 and settings.device != "cpu"
        actors = max(1, actors)
        n_speech = max(1, speech_actors) if tracks is not None and tracks.speech and speech is not None else 0
        # Actors hold their CPUs for life and every decode task needs `decode_cpus`: leave room
        # for at least one decode task, or `--actors 2` on a 2-CPU host waits forever. The ASR
        # actors share the same budget.
        spare = max(0.0, float(resources.get("CPU", 0)) - decode_cpus - 0.25 * bool(n_speech))
        if (actors + n_speech) * cpus_per_actor > spare:
            cpus_per_actor = spare / (actors + n_speech)
            log.warning("encoder and ASR actors share %.2f CPUs each so that decode tasks can run", cpus_per_actor)
        self._speech_actors = []
        if n_speech:
            speech_cls = ray.remote(_SpeechActor)
            speech_options = {
                "num_cpus": cpus_per_actor,
                "num_gpus": speech_gpus_per_actor if use_gpus else 0,
                "max_restarts": 2,
                "max_concurrency": 2,
            }
            run = uuid.uuid4().hex[:8]
            names = tuple(f"spr-asr-{run}-{i}" for i in range(n_speech))
            self._speech_actors = [speech_cls.options(name=n, **speech_options).remote(speech) for n in names]
        else:
            names = ()
        options: dict[str, Any] = {
            "num_cpus": cpus_per_actor,
            "num_gpus": gpus_per_actor if use_gpus else 0,
            "max_concurrency": max(1, videos_per_actor),
            # No restarts by Ray: the pool replaces a crashed actor itself and resubmits the
            # videos it held (Ray's restart would fail every call queued on the old one).
            "max_restarts": 0,
        }
        if not use_gpus and settings.device == "auto":
            settings = _replace(settings, device="cpu")
        actor_cls = ray.remote(_EncoderActor)
        run = uuid.uuid4().hex[:8]

        def new_actor(slot: int, generation: int) -> Any:
            # Named, so an operator (or a test) can find one: spr-encoder-<run>-<slot>.<generation>.
            name = f"spr-encoder-{run}-{slot}.{generation}"
            return actor_cls.options(name=name, **options).remote(settings, decode_cpus, tracks, max_audio_s, names)

        self._new_actor = new_actor
        self._actors = [new_actor(i, 0) for i in range(actors)]
        self._generation = [0] * len(self._actors)
        self._per_actor = max(1, videos_per_actor)
        # ref -> (actor slot, its generation when submitted, the video, its skip hash)
        self._pending: dict[Any, tuple[int, int, VideoSource, str | None]] = {}
        self._load = [0] * len(self._actors)
        self._crash_retries = max(0, int(crash_retries))
        self._retries: dict[str, int] = {}  # video key -> times resubmitted after a crash
        self.restarts = 0  # actors replaced after a crash

    @property
    def capacity(self) -> int:
        return len(self._actors) * self._per_actor

    def info(self) -> EncoderInfo:
        import ray

        return ray.get(self._actors[0].info.remote())

    def submit(self, source: VideoSource, skip_if_hash: str | None) -> None:
        i = min(range(len(self._actors)), key=self._load.__getitem__)
        ref = self._actors[i].process.remote(source, skip_if_hash)
        self._pending[ref] = (i, self._generation[i], source, skip_if_hash)
        self._load[i] += 1

    def in_flight(self) -> int:
        return len(self._pending)

    def wait(self, timeout_s: float) -> list[Any]:
        import ray

        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=timeout_s)
        results = []
        for ref in ready:
            i, generation, source, skip_if_hash = self._pending.pop(ref)
            self._load[i] -= 1
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError as exc:  # the actor died mid-video or before it
                if generation == self._generation[i]:
                    self._replace_actor(i, exc)
                tries = self._retries.get(source.key, 0)
                if tries < self._crash_retries:
                    self._retries[source.key] = tries + 1
                    log.warning("resubmitting %s after its encoder actor crashed (retry %d of %d)", source.key,
                                tries + 1, self._crash_retries, extra={"video_key": source.key})
                    self.submit(source, skip_if_hash)
                    continue
                times = "once" if tries == 0 else f"{tries + 1} times"
                results.append(FailedVideo(
                    source, f"encoder worker crashed {times} on this video ({type(exc).__name__}: "
                    f"{_first_line(exc)}); re-run to retry",
                ))
            except Exception as exc:  # anything else escaping the actor is this video's
                results.append(FailedVideo(source, f"encoder failed ({type(exc).__name__}: {_first_line(exc)})"))
        return results

    def _replace_actor(self, i: int, exc: BaseException) -> None:
        """Put a fresh actor in slot ``i`` (the crashed one is killed for good, in case Ray
        still holds it); the videos it held are resubmitted by :meth:`wait`."""
        import ray

        old = self._actors[i]
        self._generation[i] += 1
        self.restarts += 1
        log.warning("encoder actor %d crashed (%s); starting a new one and retrying its videos", i,
                    _first_line(exc), extra={"actor": i, "restarts": self.restarts})
        try:
            ray.kill(old, no_restart=True)
        except Exception:  # already gone
            pass
        self._actors[i] = self._new_actor(i, self._generation[i])

    def close(self) -> None:
        import ray

        for actor in self._actors + self._speech_actors:
            ray.kill(actor)
        self._actors = []
        self._speech_actors = []


def _first_line(exc: BaseException) -> str:
    """An exception's message without Ray's multi-line context."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _replace(settings: EncoderSettings, **changes: Any) -> EncoderSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)

