"""Model shapes as data: the named JSON configs of spr/models/configs and the one checkpoint
format that the projectors and the refiner share. Tiny shapes on CPU, a second in all."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from spr.cli import main
from spr.models import registry
from spr.models.checkpoints import PROJECTOR_CHECKPOINT, REFINER_CHECKPOINT, is_checkpoint, read_checkpoint
from spr.models.projector import build_projectors, load_projectors, save_projectors
from spr.models.refiner import build_refiner, load_refiner, save_refiner
from spr.models.registry import (
    CONFIG_DIR,
    ProjectorShape,
    RefinerShape,
    add_model_config,
    list_model_configs,
    model_config,
)

TINY_DIM = 64  # spr-tiny's embed_dim: the *-spr-tiny configs take its features


# --- the registry ---------------------------------------------------------------------------------


def test_the_package_ships_a_paper_sized_and_a_tiny_config_of_each_kind():
    assert list_model_configs("projector") == ["projector-spr-tiny", "projector-vit-l-14"]
    assert list_model_configs("refiner") == ["refiner-spr-tiny", "refiner-vit-l-14", "refiner-vit-l-14-online"]
    assert list_model_configs("clip") == ["spr-tiny"]
    assert set(list_model_configs()) == {*list_model_configs("projector"), *list_model_configs("refiner"), "spr-tiny"}
    # The paper-sized ones are today's defaults on ViT-L-14 (768-d) features.
    assert model_config("projector-vit-l-14") == ProjectorShape(in_dim=768, text_in_dim=768)
    assert model_config("refiner-vit-l-14") == RefinerShape(in_dim=768, text_in_dim=768, context_window=64)
    assert model_config("refiner-vit-l-14-online") == RefinerShape(in_dim=768, text_in_dim=768)
    assert model_config("refiner-spr-tiny").in_dim == model_config("projector-spr-tiny").in_dim == TINY_DIM


@pytest.mark.parametrize("name", list_model_configs("projector"))
def test_every_shipped_projector_config_builds(name):
    projectors = build_projectors(name).eval()
    shape = model_config(name)
    assert projectors.shape == shape and projectors.dim == shape.dim
    with torch.inference_mode():
        emb = projectors.visual(torch.ones(2, 4, shape.in_dim), torch.ones(2, 4, dtype=torch.bool))
    assert emb.shape == (2, shape.dim)
    assert projectors.project_texts(np.ones((3, shape.text_in_dim), dtype=np.float32)).shape == (3, shape.dim)


@pytest.mark.parametrize("name", list_model_configs("refiner"))
def test_every_shipped_refiner_config_builds(name):
    model = build_refiner(name).eval()
    shape = model_config(name)
    assert model.shape == shape and model.random_weights
    with torch.inference_mode():
        result = model.refine_batch(
            torch.ones(1, shape.text_in_dim), torch.ones(1, 5, shape.in_dim), torch.ones(1, 5, dtype=torch.bool),
            torch.zeros(1, dtype=torch.long),
        )
    assert result.scores.shape == (1,) and 0 <= int(result.start_idx) <= int(result.end_idx) < 5


def test_a_shape_dataclass_still_builds_directly():
    shape = RefinerShape(in_dim=8, text_in_dim=8, dim=8, layers=1, heads=2)
    assert build_refiner(shape).shape == shape
    assert build_projectors(ProjectorShape(in_dim=8, text_in_dim=8, dim=8, layers=1, heads=2)).dim == 8


def test_unknown_names_and_wrong_kinds_are_refused_with_the_known_names():
    with pytest.raises(ValueError, match=r"unknown refiner config 'refiner-huge'.*refiner-spr-tiny, refiner-vit-l-14, refiner-vit-l-14-online"):
        build_refiner("refiner-huge")
    with pytest.raises(ValueError, match=r"unknown projector config .*projector-spr-tiny, projector-vit-l-14"):
        build_projectors("nope")
    with pytest.raises(ValueError, match=r"'projector-spr-tiny' is a projector config, not a refiner config; known refiner configs: refiner-spr-tiny"):
        build_refiner("projector-spr-tiny")
    with pytest.raises(ValueError, match="is a clip config.*load_clip"):
        model_config("spr-tiny")
    with pytest.raises(ValueError, match=r"unknown model config 'nope'; known: .*spr-tiny"):
        model_config("nope")
    with pytest.raises(ValueError, match="unknown model config kind 'vae'"):
        list_model_configs("vae")
    with pytest.raises(TypeError, match="needs a RefinerShape"):
        build_refiner(ProjectorShape(in_dim=8, text_in_dim=8, dim=8, heads=2))


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as shipped, restored afterwards: configs a test adds do not leak."""
    monkeypatch.setattr(registry, "_CONFIG_PATHS", list(registry._CONFIG_PATHS))
    monkeypatch.setattr(registry, "_registry", None)


def test_a_config_file_by_path_or_added_folder_loads_and_bad_ones_say_why(tmp_path, scratch_registry):
    mine = tmp_path / "refiner-mine.json"
    mine.write_text(json.dumps({"kind": "refiner", **asdict(RefinerShape(in_dim=8, text_in_dim=4, dim=8, heads=2))}))
    assert model_config(str(mine)) == RefinerShape(in_dim=8, text_in_dim=4, dim=8, heads=2)
    add_model_config(tmp_path)
    assert "refiner-mine" in list_model_configs("refiner") and build_refiner("refiner-mine").shape.text_in_dim == 4

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "typo.json").write_text(json.dumps({"kind": "projector", "in_dim": 8, "text_in_dim": 8, "dims": 8}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) dims; fields: in_dim, text_in_dim, dim"):
        model_config(str(bad / "typo.json"))
    (bad / "odd.json").write_text(json.dumps({"kind": "refiner", "in_dim": 8, "text_in_dim": 8, "dim": 8, "heads": 2, "kernel_size": 4}))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        model_config(str(bad / "odd.json"))
    (bad / "short.json").write_text(json.dumps({"kind": "refiner", "dim": 8}))
    with pytest.raises(ValueError, match="lacks in_dim, text_in_dim"):
        model_config(str(bad / "short.json"))
    (bad / "what.json").write_text(json.dumps({"kind": "vae"}))
    with pytest.raises(ValueError, match="has kind 'vae'"):
        add_model_config(bad / "what.json")


def test_shapes_refuse_impossible_sizes():
    with pytest.raises(ValueError, match="dim=10 must be divisible by heads=4"):
        ProjectorShape(in_dim=8, text_in_dim=8, dim=10, heads=4)
    with pytest.raises(ValueError, match="layers must be a positive integer"):
        RefinerShape(in_dim=8, text_in_dim=8, dim=8, heads=2, layers=0)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
        ProjectorShape(in_dim=8, text_in_dim=8, dim=8, heads=2, dropout=1.5)


def test_the_configs_ship_with_the_package():
    # pyproject: [tool.setuptools.package-data] "spr.models" = ["configs/*.json"]
    assert {p.stem for p in CONFIG_DIR.glob("*.json")} >= {"spr-tiny", *list_model_configs("projector"), *list_model_configs("refiner")}


# --- one checkpoint format for both kinds ---------------------------------------------------------


def test_a_projector_checkpoint_round_trips_through_the_shared_helper(tmp_path):
    torch.manual_seed(0)
    projectors = build_projectors("projector-spr-tiny").eval()
    path = tmp_path / "proj.pt"
    save_projectors(path, projectors, clip_model="spr-tiny", step=3)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "shape", "visual", "text", "meta"} and payload["format"] == "spr-projectors/1"
    saved = read_checkpoint(str(path), PROJECTOR_CHECKPOINT, TINY_DIM, clip_model="spr-tiny")
    assert saved.shape == model_config("projector-spr-tiny") and saved.meta == {"clip_model": "spr-tiny", "step": 3}
    loaded = load_projectors(str(path), TINY_DIM)
    for module, reloaded in ((projectors.visual, loaded.visual), (projectors.text, loaded.text)):
        for key, value in module.state_dict().items():
            torch.testing.assert_close(reloaded.state_dict()[key], value)
    assert is_checkpoint(path, PROJECTOR_CHECKPOINT) and not is_checkpoint(path, REFINER_CHECKPOINT)


def test_a_refiner_checkpoint_round_trips_through_the_shared_helper(tmp_path):
    torch.manual_seed(0)
    model = build_refiner("refiner-spr-tiny").eval()
    path = tmp_path / "refiner.pt"
    save_refiner(path, model, clip_model="spr-tiny", step=5)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "shape", "state", "meta"} and payload["format"] == "spr-refiner/1"
    loaded = load_refiner(str(path), TINY_DIM)
    assert loaded.shape == model.shape and loaded.name == "spr-clip:refiner.pt@5"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_a_checkpoint_written_by_the_old_code_still_loads(tmp_path):
    """The dict layout the projector and refiner wrote before the shared helper existed."""
    shape = RefinerShape(in_dim=8, text_in_dim=8, dim=8, layers=1, heads=2)
    model = build_refiner(shape)
    old = {"format": "spr-refiner/1", "shape": asdict(shape), "state": model.state_dict(), "meta": {"step": 1}}
    torch.save(old, tmp_path / "old-refiner.pt")
    assert load_refiner(str(tmp_path / "old-refiner.pt"), 8).name == "spr-clip:old-refiner.pt@1"
    pshape = ProjectorShape(in_dim=8, text_in_dim=8, dim=8, layers=1, heads=2)
    projectors = build_projectors(pshape)
    old = {"format": "spr-projectors/1", "shape": asdict(pshape), "visual": projectors.visual.state_dict(),
           "text": projectors.text.state_dict(), "meta": {"step": 2}}
    torch.save(old, tmp_path / "old-proj.pt")
    assert load_projectors(str(tmp_path / "old-proj.pt"), 8).identity == "projector:old-proj.pt@2"


def test_a_checkpoint_of_the_other_kind_or_size_is_refused_clearly(tmp_path):
    save_refiner(tmp_path / "refiner.pt", build_refiner("refiner-spr-tiny"), clip_model="spr-tiny")
    save_projectors(tmp_path / "proj.pt", build_projectors("projector-spr-tiny"), clip_model="spr-tiny")
    with pytest.raises(ValueError, match=r"not an SPR projector checkpoint \(format spr-projectors/1\): it is an SPR refiner checkpoint"):
        load_projectors(str(tmp_path / "refiner.pt"), TINY_DIM)
    with pytest.raises(ValueError, match=r"not an SPR refiner checkpoint \(format spr-refiner/1\): it is an SPR projector checkpoint"):
        load_refiner(str(tmp_path / "proj.pt"), TINY_DIM)
    with pytest.raises(ValueError, match=r"refiner checkpoint .* expects 64-d CLIP frame features, the frames have 768-d.*spr-tiny"):
        load_refiner(str(tmp_path / "refiner.pt"), 768)
    with pytest.raises(ValueError, match=r"projector checkpoint .* expects 64-d CLIP features, the frames have 512-d"):
        load_projectors(str(tmp_path / "proj.pt"), 512)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not an SPR refiner checkpoint.*torch.load failed"):
        load_refiner(str(tmp_path / "junk.pt"), TINY_DIM)
    # A shape that does not match its weights (a hand-edited file) is refused, not half-loaded.
    payload = torch.load(tmp_path / "refiner.pt", weights_only=True)
    payload["shape"] = asdict(replace(model_config("refiner-spr-tiny"), dim=16))
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="'state' weights do not fit its shape"):
        load_refiner(str(tmp_path / "edited.pt"), TINY_DIM)


# --- the command lines take a name -----------------------------------------------------------------


@pytest.mark.parametrize("what", ["projector", "refiner"])
def test_train_commands_refuse_an_unknown_shape_name_before_any_work(what, tmp_path, capsys):
    queries = tmp_path / "queries.jsonl"
    queries.write_text("")
    code = main(["train", what, "--train", str(queries), "--features", "x.h5", "--out", str(tmp_path / "m.pt"),
                 "--shape", f"{what}-huge"] if what == "projector" else
                ["train", what, "--train", str(queries), "--out", str(tmp_path / "m.pt"), "--shape", f"{what}-huge"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--shape: unknown {what} config '{what}-huge'" in err and f"{what}-spr-tiny" in err


def test_train_projector_takes_its_architecture_from_a_named_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SPR_CLIP__MODEL", "spr-tiny")
    bench, out = tmp_path / "bench", tmp_path / "p.pt"
    assert main(["train", "synthetic", str(bench), "--videos", "8", "--types", "2"]) == 0
    code = main(["train", "projector", "--train", str(bench / "train.jsonl"), "--features", str(bench / "features.h5"),
                 "--query-features", str(bench / "query_features.h5"), "--epochs", "1", "--batch-size", "8",
                 "--shape", "projector-spr-tiny", "--layers", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    trained = read_checkpoint(str(out), PROJECTOR_CHECKPOINT, TINY_DIM).shape
    named = model_config("projector-spr-tiny")
    # dim, heads and dropout from the config, --layers from the flag, the sizes from the data.
    assert (trained.dim, trained.heads, trained.dropout, trained.layers) == (named.dim, named.heads, named.dropout, 2)
    assert trained.in_dim == TINY_DIM
