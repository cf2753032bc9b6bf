"""Speech recognition speed: faster-whisper on espeak-ng speech, in audio seconds per wall second.

    python bench/bench_asr.py --seconds 60 --threads 1 2 [--json]

Writes a video with ``--seconds`` of espeak-ng speech (sentences back to back with short pauses,
as spr.ingest.synthetic_speech writes it), decodes its audio once (:func:`spr.ingest.speech.decode_audio`, timed),
then for each ``--threads`` value loads a :class:`~spr.ingest.speech.SpeechTranscriber`
(``--model``, default the bundled tiny.en; ``compute_type`` auto = int8 on a CPU), warms it up
on 5 s, and times ``--repeats`` transcriptions of the whole clip (the best is reported, with
the load of other processes beside it: the machine may be shared). Model load is timed apart.
Needs espeak-ng.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import SPOKEN_SENTENCES as SENTENCES, OthersCpu, cpu_description  # bench/ is on the path of a script run from it


PAUSE_S = 0.6


def spoken_clip(folder: Path, seconds: float):
    """``(path, spans)`` of a video of ``seconds`` speaking :data:`SENTENCES` in turn, each
    :data:`PAUSE_S` after the previous one's WAV ends."""
    from spr.ingest.synthetic_speech import read_wav, speak, spoken_audio, write_video_with_audio

    lengths = {text: len(w) / r for text in SENTENCES for w, r in [read_wav(speak(text, folder / "s.wav"))]}
    layout, t = [], 0.5
    while t + lengths[SENTENCES[len(layout) % len(SENTENCES)]] < seconds:
        text = SENTENCES[len(layout) % len(SENTENCES)]
        layout.append((t, text))
        t += lengths[text] + PAUSE_S
    samples, spans = spoken_audio(seconds, layout)
    path = write_video_with_audio(folder / "speech.mp4", seconds, samples, (160, 120), 2)
    return path, spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="", help="speech.model (default: bundled tiny.en)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default="auto")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="also print one JSON line of the figures")
    args = parser.parse_args()

    from spr.ingest.speech import SAMPLE_RATE, SpeechSettings, SpeechTranscriber, decode_audio

    print(f"machine: {cpu_description()}")
    with tempfile.TemporaryDirectory() as tmp:
        path, spans = spoken_clip(Path(tmp), args.seconds)
        started = time.perf_counter()
        audio = decode_audio(path)
        decode_s = time.perf_counter() - started
    audio_s = len(audio) / SAMPLE_RATE
    speech_s = sum(e - s for s, e, _ in spans)
    words = sum(len(t.split()) for _, _, t in spans)
    print(f"clip: {audio_s:.1f} s of audio, {len(spans)} sentences, {words} words, {speech_s:.1f} s audible")
    print(f"decode_audio: {decode_s * 1000:.0f} ms ({audio_s / decode_s:.0f} audio s/s)")

    runs = []
    for threads in args.threads:
        settings = SpeechSettings(
            model=args.model, device=args.device, compute_type=args.compute_type, cpu_threads=threads, beam_size=args.beam_size
        )
        started = time.perf_counter()
        transcriber = SpeechTranscriber(settings)
        load_s = time.perf_counter() - started
        transcriber.transcribe(audio[: 5 * SAMPLE_RATE], 5.0)  # warm-up: first call allocates
        best, others, heard = float("inf"), 0.0, None
        for _ in range(args.repeats):
            load = OthersCpu()
            started = time.perf_counter()
            heard = transcriber.transcribe(audio, audio_s)
            wall = time.perf_counter() - started
            if wall < best:
                best, others = wall, load.cores()
        run = {
            "model": transcriber.identity,
            "device": transcriber.device,
            "compute_type": transcriber.compute_type,
            "cpu_threads": threads,
            "load_s": round(load_s, 3),
            "wall_s": round(best, 3),
            "audio_s_per_s": round(audio_s / best, 2),
            "words_heard": len(heard.words),
            "others_cores": round(others, 2),
        }
        runs.append(run)
        print(
            f"{run['model']} {run['device']} {run['compute_type']} cpu_threads={threads}: "
            f"{run['audio_s_per_s']:.1f} audio s/s ({best:.2f} s for {audio_s:.0f} s; load {load_s:.2f} s; "
            f"{len(heard.words)}/{words} words heard; other processes {others:.2f} cores)"
        )
    if args.json:
        print(json.dumps({"bench": "asr", "machine": cpu_description(), "audio_s": round(audio_s, 2),
                          "decode_audio_s": round(decode_s, 4), "runs": runs}))


if __name__ == "__main__":
    main()
