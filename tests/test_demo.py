"""`spr demo`, the README's main command: from nothing to ranked moments on one machine."""

from __future__ import annotations

import shutil

from conftest import run_spr


def test_spr_demo_runs_end_to_end_on_the_embedded_defaults_and_can_be_repeated(tmp_path):
    env = {"SPR_DATA_DIR": str(tmp_path / "spr"), "SPR_LOGGING__LEVEL": "ERROR"}
    first = run_spr("demo", env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "using the built-in spr-tiny model" in out  # no weights configured: said plainly
    assert "RANDOM weights" in out
    assert "planted events found first: 4/4" in out
    # What is said (espeak-ng speech, when installed) and written (subtitle sidecars) is found
    # first with REAL weights: faster-whisper tiny.en and all-MiniLM-L6-v2.
    said = 6 if shutil.which("espeak-ng") else 3
    assert f"spoken and written events found first: {said}/{said} (real weights)" in out
    assert "REAL weights: speech by faster-whisper tiny.en" in out
    assert "left out: the CLIP text encoder has random weights" in out
    assert "published 6" in out and "refined" in out
    for stage in ("ann", "catalog", "proposals", "refine", "total"):
        assert f" {stage} " in out
    # A second run reuses the videos and skips the ingest work: nothing is duplicated.
    again = run_spr("demo", "--executor", "inline", env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "published 0, skipped 6" in again.stdout
    assert "planted events found first: 4/4" in again.stdout
    assert f"spoken and written events found first: {said}/{said}" in again.stdout
