"""The text tower on a query's real tokens only, and the query-embedding cache (issue #13).

CLIP's text Transformer is causal and pools at the end-of-text token, so running only the
tokens up to EOT must give the feature of open_clip's full-context pass. Models are built with
RANDOM fixed-seed weights (the shortcut's exactness does not depend on them).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from spr.config import ClipConfig, ConfigError
from spr.models.clip import load_clip, register_model_config
from spr.models.projector import ProjectorShape, build_projectors, load_projectors, save_projectors
from spr.models.query import QueryEncoder

# Lengths from one token to past the context (truncated there), punctuation, non-ASCII, empty.
TEXTS = [
    "",
    "cat",
    "a man rides a horse along the beach at sunset",
    "Two people talk in a kitchen while the dog sleeps by the door and the radio plays an old song",
    "¿Dónde está el perro? 猫が寝ている。",
    " ".join(["the woman in the red coat opens the window and waves"] * 12),  # > 77 tokens
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


class _SequenceLengths:
    """Records the sequence length every forward pass of the text Transformer runs over (a
    forward pre-hook on the real module)."""

    def __init__(self, transformer):
        self.lengths: list[int] = []
        self._handle = transformer.register_forward_pre_hook(self._record)

    def _record(self, module, args):
        x = args[0]
        self.lengths.append(int(x.shape[1] if getattr(module, "batch_first", True) else x.shape[0]))

    def close(self):
        self._handle.remove()


@pytest.fixture(scope="module")
def tiny():
    return load_clip("spr-tiny", device="cpu", precision="fp32")


def test_real_tokens_give_the_full_context_feature_on_spr_tiny(tiny):
    assert tiny.text_tower is not None  # a causal tower pooled at EOT: the shortcut applies
    fast = tiny.encode_texts(TEXTS)
    full = tiny.encode_texts(TEXTS, full_context=True)
    assert fast.shape == full.shape == (len(TEXTS), tiny.dim) and fast.dtype == np.float32
    assert _cosines(fast, full).min() >= 0.99999
    assert np.abs(fast - full).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)


def test_each_query_runs_only_its_real_tokens(tiny):
    context = tiny.tokenizer(["x"]).shape[1]  # 32 for spr-tiny
    real = int(tiny.tokenizer(["cat"])[0].argmax()) + 1  # SOT, "cat", EOT
    assert real == 3 < context
    seen = _SequenceLengths(tiny.text_tower.transformer)
    try:
        tiny.encode_texts(["cat"])
        tiny.encode_texts(["cat"], full_context=True)
    finally:
        seen.close()
    assert seen.lengths == [real, context]


def test_a_batch_pads_to_its_longest_query_and_sorts_by_length(tiny):
    """Rows of one pass never see each other (causal mask): a query encodes the same alone and
    beside longer ones; ``batch_size`` passes are formed from length-sorted queries."""
    texts = ["cat", TEXTS[3], "a dog", TEXTS[2]]
    ends = [int(t.argmax()) + 1 for t in tiny.tokenizer(texts)]
    seen = _SequenceLengths(tiny.text_tower.transformer)
    try:
        together = tiny.encode_texts(texts, batch_size=2)
    finally:
        seen.close()
    # Sorted: ("cat", "a dog") in one pass, the two long ones in the other.
    assert seen.lengths == sorted([max(ends[0], ends[2]), max(ends[1], ends[3])])
    alone = np.concatenate([tiny.encode_texts([t]) for t in texts])
    assert np.abs(together - alone).max() < 1e-5
    np.testing.assert_allclose(together, tiny.encode_texts(texts, full_context=True), atol=1e-5)


def test_a_tower_without_a_causal_mask_takes_the_full_pass(tmp_path):
    """Bidirectional attention (SigLIP-style ``no_causal_mask``): what follows EOT changes its
    output, so the shortcut must not run."""
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "no_causal_mask": True},
    }
    path = tmp_path / "spr-test-bidirectional.json"
    path.write_text(json.dumps(cfg))
    register_model_config(path)
    clip = load_clip("spr-test-bidirectional", device="cpu", precision="fp32")
    assert clip.text_tower is None
    np.testing.assert_array_equal(clip.encode_texts(TEXTS[:3]), clip.encode_texts(TEXTS[:3], full_context=True))


def test_real_tokens_give_the_full_context_feature_on_vit_l_14():
    """The production tower (77 positions, 12 layers of 768): about 4 s to build on 2 cores."""
    clip = load_clip("ViT-L-14", device="cpu", precision="fp32")
    assert clip.text_tower is not None
    fast = clip.encode_texts(TEXTS)
    full = clip.encode_texts(TEXTS, full_context=True)
    assert _cosines(fast, full).min() >= 0.99999
    assert np.abs(fast - full).max() < 1e-5


def test_bf16_weights_stay_close_to_fp32(tiny):
    """bf16 keeps 8 bits of mantissa: its features are near, not equal, to fp32's."""
    bf16 = load_clip("spr-tiny", device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    assert _cosines(bf16.encode_texts(TEXTS), tiny.encode_texts(TEXTS, full_context=True)).min() >= 0.99


# --- the query-embedding cache -------------------------------------------------------------------


class _TowerCalls:
    """Counts forward passes of the text Transformer."""

    def __init__(self, clip):
        self.count = 0
        self._handle = clip.model.transformer.register_forward_pre_hook(self._hit)

    def _hit(self, module, args):
        self.count += 1

    def close(self):
        self._handle.remove()


def _encoder(clip, cache_size: int) -> QueryEncoder:
    return QueryEncoder(clip, load_projectors("", clip.dim, device="cpu"), cache_size=cache_size)


def test_a_cached_query_returns_the_identical_vectors_without_the_tower(tiny):
    encoder = _encoder(tiny, cache_size=8)
    calls = _TowerCalls(tiny)
    try:
        feature, embedding = encoder.encode("a man rides a horse")
        assert calls.count == 1 and encoder.cached_queries == 1
        again_feature, again_embedding = encoder.encode("a man rides a horse")
        assert calls.count == 1  # answered from the cache
        np.testing.assert_array_equal(again_feature, feature)
        np.testing.assert_array_equal(again_embedding, embedding)
        # The caller's arrays are its own: changing them leaves the cache intact.
        again_feature[:] = 0.0
        np.testing.assert_array_equal(encoder.encode("a man rides a horse")[0], feature)
        # Exactly the same text only: another spelling is another query.
        encoder.encode("A man rides a horse")
        assert calls.count == 2 and encoder.cached_queries == 2
    finally:
        calls.close()
    uncached = _encoder(tiny, cache_size=0)
    np.testing.assert_array_equal(uncached.encode("a man rides a horse")[1], embedding)
    assert uncached.cached_queries == 0


def test_the_cache_is_bounded_and_drops_the_least_recently_used(tiny):
    encoder = _encoder(tiny, cache_size=3)
    for text in ("one", "two", "three"):
        encoder.encode(text)
    encoder.encode("one")  # now the most recently used
    encoder.encode("four")  # evicts "two"
    assert encoder.cached_queries == 3
    calls = _TowerCalls(tiny)
    try:
        for text in ("one", "three", "four"):
            encoder.encode(text)
        assert calls.count == 0
        encoder.encode("two")
        assert calls.count == 1 and encoder.cached_queries == 3
    finally:
        calls.close()


def test_the_cache_is_keyed_by_the_models_that_encoded(tiny, tmp_path):
    encoder = _encoder(tiny, cache_size=8)
    _, untrained = encoder.encode("a dog runs")
    shape = ProjectorShape(in_dim=tiny.dim, text_in_dim=tiny.dim, dim=24, layers=1, heads=2, max_frames=8, dropout=0.0)
    path = tmp_path / "proj.pt"
    save_projectors(path, build_projectors(shape).eval(), clip_model="spr-tiny", step=1)
    encoder.projectors = load_projectors(str(path), tiny.dim, device="cpu", clip_model="spr-tiny")
    _, trained = encoder.encode("a dog runs")
    assert untrained.shape == (tiny.dim,) and trained.shape == (24,)  # not the stale entry


def test_the_cache_is_safe_under_concurrent_queries(tiny):
    encoder = _encoder(tiny, cache_size=4)
    texts = [f"query number {i % 10}" for i in range(40)]
    expected = {t: _encoder(tiny, 0).encode(t)[1] for t in set(texts)}
    failures: list[str] = []

    def worker(offset: int) -> None:
        # Not bitwise: torch does not promise the same bits for the same op run from several
        # threads at once (seen in the full suite). A cache mix-up would hand back another
        # query's vector, which is far from this one's (> 0.1 here), never within 1e-5.
        for text in texts[offset:] + texts[:offset]:
            got = encoder.encode(text)[1]
            if not np.allclose(got, expected[text], rtol=0, atol=1e-5):
                failures.append(f"{text}: off by {np.abs(got - expected[text]).max():.2e}")

    threads = [threading.Thread(target=worker, args=(i * 7,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and encoder.cached_queries <= 4


def test_the_cache_size_comes_from_the_config():
    assert ClipConfig().query_cache_size == 1024
    with pytest.raises(ConfigError, match="query_cache_size"):
        ClipConfig(query_cache_size=-1)
    with pytest.raises(ValueError, match="cache_size"):
        QueryEncoder(None, None, cache_size=-1)


def test_the_search_services_encoder_takes_its_cache_size_from_the_config():
    from spr.config import load_config

    config = load_config(
        None,
        {"SPR_CLIP__MODEL": "spr-tiny", "SPR_CLIP__DEVICE": "cpu", "SPR_CLIP__PRECISION": "fp32", "SPR_CLIP__QUERY_CACHE_SIZE": "2"},
    )
    assert config.clip.query_cache_size == 2
    encoder = QueryEncoder.from_config(config)
    assert encoder.cache_size == 2
    for text in ("a", "b", "c"):
        encoder.encode(text)
    assert encoder.cached_queries == 2
