"""Videos with real (synthetic) speech for the speech tests and the ASR benchmark (test fixtures).

The writers live in the package (:mod:`spr.ingest.synthetic_speech`, which ``spr demo`` uses too);
this adds what only tests need: failing (CI) or skipping when espeak-ng is missing.
"""

from __future__ import annotations

import os
import shutil

from spr.ingest.synthetic_speech import (  # noqa: F401  (re-exported for the tests)
    AUDIO_RATE,
    ESPEAK,
    Span,
    read_wav,
    speak,
    spoken_audio,
    write_silent_video,
    write_spoken_video,
    write_video_with_audio,
)


def require_espeak() -> str:
    """The espeak-ng executable; fails the test in CI (CI=true), skips it elsewhere, when missing."""
    import pytest

    found = shutil.which(ESPEAK)
    if found:
        return found
    message = "espeak-ng is not installed (apt-get install espeak-ng): the speech tests need real speech"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


