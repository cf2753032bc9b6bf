"""The refiner's DynamicBatcher: sharing forward passes across callers, its limits, errors and
shutdown. Batches are made deterministic by holding the batching thread inside a forward pass
while more work queues up, not by timing."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from spr.features import VISUAL
from spr.refine.batching import MODEL_MODALITIES, BatcherClosed, DynamicBatcher, RefineWork, pad_features, pad_features_on
from spr.models.refiner import RefinerShape, SPRClipRefiner, build_refiner

D = 16


@pytest.fixture
def model() -> SPRClipRefiner:
    torch.manual_seed(0)
    return build_refiner(RefinerShape(in_dim=D, text_in_dim=D, dim=D, layers=1, heads=4, max_frames=64)).eval()


def make_work(seed: int, proposals: int = 3, projected: bool = False) -> RefineWork:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, size=proposals)
    return RefineWork(
        rng.standard_normal(D).astype(np.float32),
        [rng.standard_normal((n, D)).astype(np.float16) for n in lengths],
        projected,
    )


class GatedModel:
    """Wraps ``refine_embedded`` so the first forward pass waits for ``release``."""

    def __init__(self, model: SPRClipRefiner) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._inner = model.refine_embedded
        self._first = True
        model.refine_embedded = self  # type: ignore[method-assign]

    def __call__(self, *args, **kwargs):
        if self._first:
            self._first = False
            self.entered.set()
            assert self.release.wait(30)
        return self._inner(*args, **kwargs)


def test_queued_work_shares_one_forward_pass_with_identical_results(model: SPRClipRefiner) -> None:
    works = [make_work(i, proposals=2 + i % 3, projected=i % 2 == 1) for i in range(6)]
    with DynamicBatcher(model, max_batch_proposals=512, max_wait_ms=0) as batcher:
        sequential = [batcher.refine(w) for w in works]
        assert all(o.batch_queries == 1 for o in sequential)

        gate = GatedModel(model)
        blocker = batcher.submit(make_work(100))
        assert gate.entered.wait(30)
        futures = [batcher.submit(w) for w in works]  # all queue behind the held batch
        gate.release.set()
        blocker.result(30)
        batched = [f.result(30) for f in futures]

    assert {o.batch_queries for o in batched} == {len(works)}
    assert {o.batch_proposals for o in batched} == {sum(w.proposals for w in works)}
    for alone, shared in zip(sequential, batched):
        np.testing.assert_allclose(shared.scores, alone.scores, atol=1e-5)
        np.testing.assert_array_equal(shared.start_idx, alone.start_idx)
        np.testing.assert_array_equal(shared.end_idx, alone.end_idx)


def test_batches_never_exceed_max_batch_proposals(model: SPRClipRefiner) -> None:
    works = [make_work(i, proposals=3) for i in range(5)]
    with DynamicBatcher(model, max_batch_proposals=7, max_wait_ms=0) as batcher:
        gate = GatedModel(model)
        blocker = batcher.submit(make_work(100))
        assert gate.entered.wait(30)
        futures = [batcher.submit(w) for w in works]
        gate.release.set()
        blocker.result(30)
        outcomes = [f.result(30) for f in futures]
        # One query larger than the cap still runs, alone.
        big = batcher.refine(make_work(7, proposals=9), timeout=30)
    assert [o.batch_proposals for o in outcomes] == [6, 6, 6, 6, 3]
    assert [o.batch_queries for o in outcomes] == [2, 2, 2, 2, 1]
    assert (big.batch_proposals, big.batch_queries) == (9, 1)


def test_concurrent_callers_from_many_threads(model: SPRClipRefiner) -> None:
    works = [make_work(i) for i in range(8)]
    with DynamicBatcher(model, max_wait_ms=0) as batcher:
        expected = [batcher.refine(w) for w in works]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda w: batcher.refine(w, timeout=30), works))
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_array_equal(a.end_idx, b.end_idx)


def test_a_failed_forward_pass_fails_every_caller_in_the_batch(model: SPRClipRefiner) -> None:
    with DynamicBatcher(model, max_wait_ms=0) as batcher:
        gate = GatedModel(model)
        blocker = batcher.submit(make_work(100))
        assert gate.entered.wait(30)

        def broken(*args, **kwargs):
            raise RuntimeError("device on fire")

        gate._inner = broken
        futures = [batcher.submit(make_work(i)) for i in range(3)]
        gate.release.set()
        for future in [blocker, *futures]:
            with pytest.raises(RuntimeError, match="device on fire"):
                future.result(30)
        gate._inner = SPRClipRefiner.refine_embedded.__get__(model)
        assert batcher.refine(make_work(5), timeout=30).scores.shape == (3,)  # the thread survived


def test_malformed_work_is_refused_at_submit(model: SPRClipRefiner) -> None:
    with DynamicBatcher(model) as batcher:
        with pytest.raises(ValueError, match=r"query must have shape \(16,\)"):
            batcher.submit(RefineWork(np.zeros(5), [np.zeros((3, D))]))
        with pytest.raises(ValueError, match="proposal 1"):
            batcher.submit(RefineWork(np.zeros(D), [np.zeros((3, D)), np.zeros((0, D))]))
        with pytest.raises(ValueError, match="proposal 0"):
            batcher.submit(RefineWork(np.zeros(D), [np.zeros((65, D))]))


def test_work_names_the_modality_of_its_features_and_the_model_takes_only_its_own(model: SPRClipRefiner) -> None:
    work = make_work(9)
    assert work.modality == VISUAL == "visual" and MODEL_MODALITIES == (VISUAL,)
    with DynamicBatcher(model, max_wait_ms=0) as batcher:
        assert batcher.refine(work, timeout=30).scores.shape == (3,)
        speech = RefineWork(work.query, work.features, work.query_projected, modality="speech")
        with pytest.raises(ValueError, match="reads visual features, not 'speech'"):
            batcher.submit(speech)


def test_close_finishes_queued_work_then_refuses_more(model: SPRClipRefiner) -> None:
    batcher = DynamicBatcher(model, max_wait_ms=0)
    gate = GatedModel(model)
    blocker = batcher.submit(make_work(100))
    assert gate.entered.wait(30)
    queued = batcher.submit(make_work(1))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert blocker.result(0).scores.shape == (3,)
    assert queued.result(0).scores.shape == (3,)
    with pytest.raises(BatcherClosed):
        batcher.submit(make_work(2))
    batcher.close()  # idempotent


def test_oversized_batches_run_in_length_sorted_chunks_with_the_same_results(model: SPRClipRefiner) -> None:
    works = [make_work(i, proposals=4) for i in range(4)]
    whole = DynamicBatcher(model, max_wait_ms=0)
    chunked = DynamicBatcher(model, max_wait_ms=0, max_batch_frames=40)  # 40 padded frames: several passes
    with whole, chunked:
        for work in works:
            a, b = whole.refine(work, timeout=30), chunked.refine(work, timeout=30)
            np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
            np.testing.assert_array_equal(b.start_idx, a.start_idx)
            np.testing.assert_array_equal(b.end_idx, a.end_idx)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu(model: SPRClipRefiner) -> None:
    works = [make_work(i, proposals=4, projected=i % 2 == 1) for i in range(6)]
    with DynamicBatcher(model, max_wait_ms=0) as batcher:
        on_cpu = [batcher.refine(w, timeout=30) for w in works]
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions could flip a near-tied argmax
    try:
        with DynamicBatcher(copy.deepcopy(model).to("cuda"), max_wait_ms=50, max_batch_frames=64) as batcher:
            on_gpu = [f.result(60) for f in [batcher.submit(w) for w in works]]
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert max(o.batch_queries for o in on_gpu) > 1
    for cpu, gpu in zip(on_cpu, on_gpu):
        np.testing.assert_allclose(gpu.scores, cpu.scores, atol=1e-4)
        np.testing.assert_array_equal(gpu.start_idx, cpu.start_idx)
        np.testing.assert_array_equal(gpu.end_idx, cpu.end_idx)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_padding_on_the_gpu_equals_padding_on_the_host() -> None:
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((n, D)).astype(np.float16) for n in (5, 1, 12, 7)]
    frames, mask = pad_features(arrays)
    on_gpu, mask_on_gpu = pad_features_on(arrays, torch.device("cuda"))
    assert on_gpu.is_cuda and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), frames, rtol=0, atol=0)
    assert torch.equal(mask_on_gpu.cpu(), mask)
