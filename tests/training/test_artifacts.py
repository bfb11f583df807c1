"""Model artifacts: round trip, refusal of tampered or foreign artifacts, atomic saving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import backend.ml.network as network_module
from backend.ml.network import (
    MANIFEST_FILE,
    PRESETS,
    WEIGHTS_FILE,
    ModelArtifactError,
    Preset,
    build_manifest,
    create_network,
    default_preset_name,
    load_model,
    save_model,
    training_data_fingerprint,
)
from backend.ml.phases import PHASES
from backend.ml.series_head import SeriesHead

HEAD = SeriesHead(
    feature_mean=[-1.0, -2.0, -0.5, -3.0],
    feature_scale=[1.5, 2.0, 1.0, 0.5],
    weights=[[1.0, -0.5, 0.0, 0.25], [0.0, 2.0, -1.0, 0.0], [-0.5, 0.0, 1.5, 0.5], [0.0, 0.0, 0.5, 1.0]],
    bias=[0.1, -0.2, 0.3, -0.2],
    c=0.3,
    n_series=120,
)


def _save(tmp_path: Path, preset: Preset, name: str = "model", head: SeriesHead | None = None) -> Path:
    torch.manual_seed(0)
    network = create_network(preset)
    manifest = build_manifest(preset, fingerprint="f" * 64, metrics={"val_series_macro_f1": 0.5}, series_head=head)
    save_model(tmp_path / name, network=network, manifest=manifest)
    return tmp_path / name


def _edit_manifest(model_dir: Path, **changes: object) -> None:
    path = model_dir / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_presets_match_the_paper_and_the_cpu_budget() -> None:
    paper, cpu = PRESETS["paper"], PRESETS["cpu"]
    assert (paper.arch, paper.image_size, paper.windows, paper.epochs) == ("efficientnet_b2", 224, ((50.0, 400.0),), 15)
    assert cpu.image_size <= 128
    assert cpu.windows[0] == (50.0, 400.0)  # the paper's window first; the cpu preset adds two narrower channels
    assert cpu.in_chans == len(cpu.windows) == 3
    assert cpu.resize_first
    assert not paper.resize_first  # the paper's order: window, then resize
    assert default_preset_name() == ("paper" if torch.cuda.is_available() else "cpu")


def test_round_trip_gives_the_same_probabilities(tmp_path: Path, tiny_preset: Preset) -> None:
    model_dir = _save(tmp_path, tiny_preset)
    assert sorted(p.name for p in model_dir.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]
    model = load_model(model_dir, device="cpu", bf16=False)
    images = np.random.default_rng(0).random((37, 1, 32, 32), dtype=np.float32)  # 37: a partial last batch
    probs = model.predict_proba(images)
    assert probs.shape == (37, len(PHASES))
    assert probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    torch.manual_seed(0)
    reference = create_network(tiny_preset).eval()
    with torch.no_grad():
        expected = torch.sigmoid(reference(torch.from_numpy(images))).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    manifest = model.manifest
    assert manifest.classes == list(PHASES)
    assert manifest.preprocessing["windows_hu"] == [[50.0, 400.0]]
    assert len(manifest.weights_sha256) == 64
    assert manifest.metrics == {"val_series_macro_f1": 0.5}


def test_the_series_head_round_trips_and_is_protected(tmp_path: Path, tiny_preset: Preset) -> None:
    model_dir = _save(tmp_path, tiny_preset, head=HEAD)
    assert load_model(model_dir).manifest.series_head == HEAD
    _edit_manifest(model_dir, series_head={**HEAD.model_dump(), "bias": [5.0, 0.0, 0.0, 0.0]})
    with pytest.raises(ModelArtifactError, match="differs from the one recorded"):
        load_model(model_dir)


def test_a_model_from_before_the_head_still_loads(tmp_path: Path, tiny_preset: Preset) -> None:
    """Artifacts written before the head existed have no ``series_head`` key, in the manifest or its embedded copy."""
    model_dir = _save(tmp_path, tiny_preset)
    data = json.loads((model_dir / MANIFEST_FILE).read_text())
    assert data.pop("series_head") is None
    (model_dir / MANIFEST_FILE).write_text(json.dumps(data))
    assert load_model(model_dir).manifest.series_head is None
    _edit_manifest(model_dir, series_head=HEAD.model_dump())  # a head added by hand is refused
    with pytest.raises(ModelArtifactError, match="differs from the one recorded"):
        load_model(model_dir)


def test_heads_record_what_they_read_and_heads_from_before_the_key_still_load(
    tmp_path: Path, tiny_preset: Preset
) -> None:
    weighted = HEAD.model_copy(update={"features": "weighted_mean_logits"})
    model_dir = _save(tmp_path, tiny_preset, name="weighted", head=weighted)
    assert load_model(model_dir).manifest.series_head == weighted
    _edit_manifest(model_dir, series_head=HEAD.model_dump())  # switched to the plain mean by hand: refused
    with pytest.raises(ModelArtifactError, match="differs from the one recorded"):
        load_model(model_dir)
    legacy_dir = _save(tmp_path, tiny_preset, name="legacy", head=HEAD)  # a head written before the features key
    data = json.loads((legacy_dir / MANIFEST_FILE).read_text())
    assert data["series_head"].pop("features") == "mean_logits"
    (legacy_dir / MANIFEST_FILE).write_text(json.dumps(data))
    legacy = load_model(legacy_dir).manifest.series_head
    assert legacy is not None
    assert legacy.features == "mean_logits"


def test_predict_proba_checks_the_input_shape(tmp_path: Path, tiny_preset: Preset) -> None:
    model = load_model(_save(tmp_path, tiny_preset))
    with pytest.raises(ValueError, match=r"\[n, 1, 32, 32\]"):
        model.predict_proba(np.zeros((2, 1, 64, 64), dtype=np.float32))
    assert model.predict_proba(np.zeros((0, 1, 32, 32), dtype=np.float32)).shape == (0, 4)


def test_tampered_weights_are_refused(tmp_path: Path, tiny_preset: Preset) -> None:
    model_dir = _save(tmp_path, tiny_preset)
    weights = model_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match="sha256"):
        load_model(model_dir)


@pytest.mark.parametrize(
    "changes",
    [{"image_size": 64}, {"windows": [[40.0, 80.0]]}, {"metrics": {"val_series_macro_f1": 0.99}}],
    ids=["image_size", "windows", "metrics"],
)
def test_hand_edited_manifest_is_refused(tmp_path: Path, tiny_preset: Preset, changes: dict[str, object]) -> None:
    model_dir = _save(tmp_path, tiny_preset)
    _edit_manifest(model_dir, **changes)
    with pytest.raises(ModelArtifactError, match="differs from the one recorded"):
        load_model(model_dir)


def test_wrong_classes_are_refused(tmp_path: Path, tiny_preset: Preset) -> None:
    model_dir = _save(tmp_path, tiny_preset)
    _edit_manifest(model_dir, classes=["arterial", "non_contrast", "venous", "others"])
    with pytest.raises(ModelArtifactError, match="classes"):
        load_model(model_dir)


def test_unknown_arch_and_format_are_refused(tmp_path: Path, tiny_preset: Preset) -> None:
    model_dir = _save(tmp_path, tiny_preset)
    _edit_manifest(model_dir, arch="not_a_network")
    with pytest.raises(ModelArtifactError, match="unknown network architecture 'not_a_network'"):
        load_model(model_dir)
    _edit_manifest(model_dir, arch=tiny_preset.arch, format_version=99)
    with pytest.raises(ModelArtifactError, match="format_version 99"):
        load_model(model_dir)
    with pytest.raises(ModelArtifactError, match=r"no manifest\.json"):
        load_model(tmp_path)


def test_save_refuses_an_existing_folder(tmp_path: Path, tiny_preset: Preset) -> None:
    model_dir = _save(tmp_path, tiny_preset)
    with pytest.raises(ModelArtifactError, match="already exists"):
        _save(tmp_path, tiny_preset, name=model_dir.name)


def test_failed_save_leaves_nothing(tmp_path: Path, tiny_preset: Preset, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_manifest_writer(path: Path, manifest: object) -> None:
        path.write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(network_module, "_write_manifest", broken_manifest_writer)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, tiny_preset)
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_ignores_order_and_duplicates() -> None:
    a = training_data_fingerprint([("1.2", "venous"), ("1.1", "arterial")])
    b = training_data_fingerprint([("1.1", "arterial"), ("1.2", "venous"), ("1.1", "arterial")])
    c = training_data_fingerprint([("1.1", "arterial"), ("1.2", "others")])
    assert a == b != c
