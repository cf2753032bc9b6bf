"""Concurrent query encodings share the text tower's passes (issue 13, 16 clients).

What a user depends on: a query alone is encoded at once; queries arriving while the tower is
busy are encoded together in the next pass, each getting its own answer (never another
query's); a failing pass fails exactly the calls in it.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from spr.models.clip import load_clip
from spr.models.projector import load_projectors
from spr.models.query import CombinedCalls, QueryEncoder


def test_a_lone_call_runs_at_once_in_a_pass_of_its_own():
    seen: list[list[int]] = []
    combined = CombinedCalls(lambda items: seen.append(list(items)) or [i * 2 for i in items])
    assert [combined(i) for i in range(3)] == [0, 2, 4]
    assert seen == [[0], [1], [2]] and combined.passes == 3


def test_calls_arriving_during_a_pass_share_the_next_one_and_get_their_own_answers():
    gate = threading.Event()
    sizes: list[int] = []

    def slow(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            gate.wait(5)  # the first pass holds the tower while the others arrive
        return [f"answer {i}" for i in items]

    combined = CombinedCalls(slow, max_batch=16)
    results: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, combined(i))) for i in range(9)]
    threads[0].start()
    time.sleep(0.2)
    for t in threads[1:]:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join(10)
    assert results == {i: f"answer {i}" for i in range(9)}
    assert sizes[0] == 1 and sum(sizes) == 9 and len(sizes) < 9  # the 8 waiting ones went together


def test_a_failed_pass_fails_its_calls_and_the_next_pass_runs():
    calls = {"n": 0}

    def flaky(items):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("tower broke")
        return list(items)

    combined = CombinedCalls(flaky)
    with pytest.raises(RuntimeError, match="tower broke"):
        combined("a")
    assert combined("b") == "b"


def test_concurrent_queries_through_the_encoder_match_one_at_a_time():
    clip = load_clip("spr-tiny", device="cpu", precision="fp32")
    projectors = load_projectors("", clip.dim, device="cpu", clip_model=clip.model_name, uses=("queries",))
    alone = QueryEncoder(clip, projectors, cache_size=0)
    together = QueryEncoder(clip, projectors, cache_size=0)
    texts = [f"a person opens door number {i}" + " quickly" * (i % 4) for i in range(24)]
    expected = {t: alone.encode(t)[1] for t in texts}
    got: dict[str, np.ndarray] = {}
    threads = [threading.Thread(target=lambda t=t: got.__setitem__(t, together.encode(t)[1])) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(got) == set(texts)
    for t in texts:  # fp32: a query's feature does not depend on its batch-mates (float noise aside)
        np.testing.assert_allclose(got[t], expected[t], rtol=0, atol=1e-5)
    assert together._combined.passes <= len(texts)
