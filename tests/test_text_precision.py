"""The text tower's own precision, int8 among them, and ISA caps on torch (issue #13).

``clip.text_precision`` sets the text tower apart from the frames tower: int8 is torch dynamic
quantization of its linear layers (a quarter of fp32's weight bytes, what a batch-1 query pays
for). Its features are near fp32's, not equal: the tolerances below are measured on these
RANDOM fixed-seed models (lowest cosine to fp32: int8 0.9978 on spr-tiny, 0.9984 on ViT-L-14;
bf16 0.9999 on both) and leave room for other CPUs' kernels.

An ISA cap (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY`` below the bf16 instructions) makes
torch run bf16 emulated whatever the CPU has, so ``auto`` must pick fp32 under it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from spr.config import ClipConfig, ConfigError, load_config
from spr.cpu import bf16_capped_off, cpu_model_name, cpu_report, format_cpu_report, isa_caps, native_bf16
from spr.models.clip import (
    AUTO_CPU_TEXT_PRECISION,
    int8_available,
    load_clip,
    resolve_precision,
    resolve_text_precision,
)
from spr.models.query import QueryEncoder

INT8_MIN_COSINE = 0.995
BF16_MIN_COSINE = 0.999

AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}
NO_CAPS: dict[str, str] = {}

# Video-moment queries of 1 to ~30 tokens, and captions to retrieve among.
QUERIES = [
    "cat",
    "a man rides a horse along the beach at sunset",
    "two people talk in a kitchen while the dog sleeps by the door",
    "a red car stops at the old bridge in the rain",
    "children play football in the park",
    "¿Dónde está el perro? 猫が寝ている。",
]
CAPTIONS = [
    "a horse on a beach",
    "people cooking dinner",
    "a dog asleep on the floor",
    "traffic on a wet bridge",
    "kids kicking a ball on grass",
    "a cat on a sofa",
    "a city street at night",
    "an empty room",
    "a woman reading on a train",
    "fireworks over a harbour",
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def fp32():
    return load_clip("spr-tiny", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def int8():
    return load_clip("spr-tiny", device="cpu", precision="fp32", text_precision="int8")


# --- choosing the precision -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ, native",
    [
        (NO_CAPS, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
        ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, False),  # AVX512 without its bf16 dot products
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
        ({"ATEN_CPU_CAPABILITY": "avx2"}, False),
        ({"ATEN_CPU_CAPABILITY": "default"}, False),
        ({"ATEN_CPU_CAPABILITY": "avx512"}, True),
        ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, True),  # MKL runs fp32 only: no say over bf16
        ({"ONEDNN_MAX_CPU_ISA": ""}, True),  # set but empty: no cap
    ],
)
def test_an_isa_cap_below_bf16_means_no_native_bf16(environ, native):
    assert native_bf16(SAPPHIRE_RAPIDS, environ) is native
    assert bf16_capped_off(environ) is not native
    assert resolve_precision("auto", "cpu", SAPPHIRE_RAPIDS, environ) == ("bf16" if native else "fp32")
    assert native_bf16(AVX2_ONLY, environ) is False  # a cap never adds what the CPU lacks


def test_text_precision_auto_is_int8_on_a_cpu_only_when_precision_is_auto_too():
    cpu_auto = "int8" if AUTO_CPU_TEXT_PRECISION == "int8" and int8_available() else None
    for flags in (AVX2_ONLY, AVX512_BF16):
        expected = cpu_auto or resolve_precision("auto", "cpu", flags, NO_CAPS)
        assert resolve_text_precision("auto", "auto", "cpu", flags, NO_CAPS) == expected
    # An explicit frames precision is the text tower's too, unless the text's is explicit.
    assert resolve_text_precision("auto", "fp32", "cpu", AVX512_BF16, NO_CAPS) == "fp32"
    assert resolve_text_precision("auto", "bf16", "cpu", AVX512_BF16, NO_CAPS) == "bf16"
    assert resolve_text_precision("auto", "auto", "cuda", AVX512_BF16, NO_CAPS) == "fp16"
    assert resolve_text_precision("int8", "bf16", "cpu", AVX2_ONLY, NO_CAPS) == "int8"
    assert resolve_text_precision("bf16", "auto", "cpu", AVX512_BF16, {"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "bf16"


def test_bad_text_precisions_are_refused():
    with pytest.raises(ValueError, match="int8 runs on a CPU only"):
        resolve_text_precision("int8", "auto", "cuda")
    with pytest.raises(ValueError, match="text precision must be"):
        resolve_text_precision("int4", "auto", "cpu")
    with pytest.raises(ValueError, match="fp16 is refused on a CPU"):
        resolve_text_precision("fp16", "auto", "cpu")
    with pytest.raises(ConfigError, match="clip.text_precision"):
        ClipConfig(text_precision="int4")


def _run_capped(code: str, caps: dict[str, str]) -> dict:
    """``code`` (printing one JSON line last) in a fresh Python whose environment holds ``caps``:
    torch's libraries read them when they first run, so it cannot be done in this process."""
    env = {k: v for k, v in os.environ.items() if k not in caps}
    env.update(caps)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CAPPED_CODE = """
import json, torch
from spr.cpu import cpu_report, format_cpu_report
from spr.models.clip import load_clip, resolve_precision, resolve_text_precision
clip = load_clip("spr-tiny", device="cpu", text_precision="auto")
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "auto": resolve_precision("auto", "cpu"),
                  "loaded": clip.precision, "text": clip.text_precision, "report": cpu_report(),
                  "line": format_cpu_report()}))
"""


def test_a_process_capped_to_avx2_runs_avx2_kernels_and_picks_fp32():
    caps = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    got = _run_capped(CAPPED_CODE, caps)
    # The cap takes effect in ATen (on a CPU below AVX2 torch says less still).
    assert got["capability"] in ("AVX2", "DEFAULT")
    assert got["auto"] == got["loaded"] == "fp32"
    assert got["report"]["isa_caps"] == caps and got["report"]["native_bf16"] is False
    assert "caps ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" in got["line"]
    assert got["text"] == resolve_text_precision("auto", "auto", "cpu", (), caps)


# --- what this CPU is ----------------------------------------------------------------------------


def test_cpu_report_says_what_decides_speed_here():
    import torch

    report = cpu_report()
    assert set(report) == {"model", "flags", "torch_capability", "isa_caps", "torch_threads", "quantized_engine", "native_bf16"}
    assert {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni"} <= set(report["flags"])
    assert report["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["torch_threads"] == torch.get_num_threads()
    assert report["isa_caps"] == isa_caps()
    line = format_cpu_report(report)
    assert "\n" not in line and report["model"] in line and f"torch {report['torch_capability']}" in line


def test_cpu_model_name_reads_a_cpuinfo_file(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2\n")
    assert cpu_model_name(str(info)) == "Test CPU 9000"
    assert cpu_model_name(str(tmp_path / "missing")) == "unknown"


def test_the_old_names_in_spr_models_clip_still_work():
    from spr import cpu
    from spr.models import clip

    assert clip.cpu_flags is cpu.cpu_flags and clip.NATIVE_BF16_FLAGS is cpu.NATIVE_BF16_FLAGS
    assert clip.cpu_has_native_bf16(SAPPHIRE_RAPIDS) and not clip.cpu_has_native_bf16(AVX2_ONLY)


# --- int8 and bf16 text towers -------------------------------------------------------------------


def _quantized_linears(module) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    return sum(isinstance(m, DynamicInt8Linear) for m in module.modules())


def test_int8_quantizes_every_text_linear_layer_and_nothing_of_the_frames_tower(int8, fp32):
    layers = len(int8.model.transformer.resblocks)
    # q/k/v and output projections (split out of nn.MultiheadAttention), MLP in and out.
    assert _quantized_linears(int8.model.transformer) == 4 * layers
    assert _quantized_linears(int8.model.visual) == 0
    assert int8.precision == "fp32" and int8.text_precision == "int8"
    assert int8.model.transformer.get_cast_dtype() == fp32.model.transformer.get_cast_dtype()


@pytest.mark.parametrize("text_precision, tolerance", [("int8", INT8_MIN_COSINE), ("bf16", BF16_MIN_COSINE)])
def test_low_precision_text_features_stay_near_fp32_and_keep_the_top_1(fp32, text_precision, tolerance):
    clip = load_clip("spr-tiny", device="cpu", precision="fp32", text_precision=text_precision)
    reference, got = fp32.encode_texts(QUERIES), clip.encode_texts(QUERIES)
    assert got.shape == reference.shape and got.dtype == np.float32
    assert _cosines(got, reference).min() >= tolerance
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Retrieval among fixed fp32 text features: each query finds its own fp32 feature first
    # (the nearest other text is at cosine 0.83 at most here)...
    gallery = np.concatenate([reference, fp32.encode_texts(CAPTIONS)])  # (len(QUERIES) + len(CAPTIONS), dim)
    assert ((got @ gallery.T).argmax(1) == np.arange(len(QUERIES))).all()
    # ...and, among the captions alone, the same top caption wherever fp32's top two are further
    # apart than int8 moves a score (0.025 at most, measured): ties may swap, clear winners not.
    captions = gallery[len(QUERIES) :]
    scores = np.sort(reference @ captions.T, axis=1)
    clear = scores[:, -1] - scores[:, -2] > 0.03
    assert clear.sum() >= 3  # the check is not vacuous
    assert ((got @ captions.T).argmax(1) == (reference @ captions.T).argmax(1))[clear].all()


def test_int8_batched_or_full_context_stays_within_the_tolerance(int8, fp32):
    """int8 activations are quantized per call over the whole pass: another query in the batch,
    or the padding of the full-context pass, changes the scale a little. Not exact, as fp32 is,
    but as near fp32 as a query alone."""
    alone = np.concatenate([int8.encode_texts([q]) for q in QUERIES])
    for got in (int8.encode_texts(QUERIES, batch_size=3), int8.encode_texts(QUERIES, full_context=True)):
        assert _cosines(got, alone).min() >= INT8_MIN_COSINE
        assert _cosines(got, fp32.encode_texts(QUERIES)).min() >= INT8_MIN_COSINE
    np.testing.assert_array_equal(int8.encode_texts([QUERIES[1]]), alone[1:2])  # alone: deterministic


def test_the_frames_tower_keeps_its_precision_bit_for_bit():
    """A text tower at another precision is built from fp32 and each tower converted apart: the
    frames come out exactly as a one-precision model's, and a bf16 text tower exactly as
    open_clip's own bf16 build."""
    frames = list(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    bf16 = load_clip("spr-tiny", device="cpu", precision="bf16")
    for text_precision in ("int8", "fp32"):
        split = load_clip("spr-tiny", device="cpu", precision="bf16", text_precision=text_precision)
        assert split.precision == "bf16" and split.text_precision == text_precision
        np.testing.assert_array_equal(split.encode_frames(frames), bf16.encode_frames(frames))
    text_bf16 = load_clip("spr-tiny", device="cpu", precision="fp32", text_precision="bf16")
    np.testing.assert_array_equal(text_bf16.encode_texts(QUERIES), bf16.encode_texts(QUERIES))
    np.testing.assert_array_equal(text_bf16.encode_frames(frames), load_clip("spr-tiny", device="cpu", precision="fp32").encode_frames(frames))


def test_the_search_services_encoder_takes_the_text_precision_from_the_config():
    config = load_config(
        None,
        {"SPR_CLIP__MODEL": "spr-tiny", "SPR_CLIP__DEVICE": "cpu", "SPR_CLIP__PRECISION": "fp32", "SPR_CLIP__TEXT_PRECISION": "int8"},
    )
    assert config.clip.text_precision == "int8"
    encoder = QueryEncoder.from_config(config)
    assert encoder.clip.text_precision == "int8" and encoder.clip.precision == "fp32"
    feature, embedding = encoder.encode("a man rides a horse")
    assert feature.shape == (encoder.clip_dim,) and np.isfinite(embedding).all()
    assert ClipConfig().text_precision == "auto"


def test_int8_on_vit_l_14_stays_near_fp32():
    """The production tower (12 layers of 768), where the tolerance was measured: about 10 s."""
    fp32 = load_clip("ViT-L-14", device="cpu", precision="fp32")
    reference = fp32.encode_texts(QUERIES)
    captions = fp32.encode_texts(CAPTIONS)
    del fp32
    int8 = load_clip("ViT-L-14", device="cpu", precision="fp32", text_precision="int8")
    got = int8.encode_texts(QUERIES)
    assert _cosines(got, reference).min() >= INT8_MIN_COSINE
    gallery = np.concatenate([reference, captions])
    assert ((got @ gallery.T).argmax(1) == np.arange(len(QUERIES))).all()
