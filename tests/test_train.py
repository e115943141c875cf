import json
import math

import pytest
import torch

from helpers import data, train
from helpers.model import build_model


@pytest.fixture
def splits(tiny_isic):
    return (data.load_dataset(tiny_isic, "train", 32, progress=False),
            data.load_dataset(tiny_isic, "test", 32, progress=False))


def _fit(splits, tmp_path, freeze=False, seed=3, epochs=2):
    torch.manual_seed(seed)
    model = build_model(freeze, encoder_weights=None)
    history = train.fit(model, *splits, epochs=epochs, batch_size=4, seed=seed, device="cpu",
                        out_dir=tmp_path, progress=False, log=None)
    return model, history


def test_history_records_losses_and_metrics_per_epoch(splits, tmp_path):
    _, history = _fit(splits, tmp_path)
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert set(row) == {"epoch", "train_loss", "test_loss", "test_iou", "test_dice", "seconds"}
        assert all(math.isfinite(row[k]) for k in row)
        assert 0 <= row["test_iou"] <= row["test_dice"] <= 1  # J <= D always
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["settings"]["optimizer"] == "NAdam" and saved["settings"]["lr"] == 0.001
    assert [r["train_loss"] for r in saved["history"]] == [r["train_loss"] for r in history]


def test_seeded_cpu_runs_are_reproducible(splits, tmp_path):
    _, h1 = _fit(splits, tmp_path / "a")
    _, h2 = _fit(splits, tmp_path / "b")
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert strip(h1) == strip(h2)
    _, h3 = _fit(splits, tmp_path / "c", seed=4)
    assert strip(h3) != strip(h1)


def test_training_lowers_the_loss(splits, tmp_path):
    _, history = _fit(splits, tmp_path, epochs=4)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_frozen_encoder_is_unchanged_by_fit(splits, tmp_path):
    torch.manual_seed(0)
    model = build_model(True, encoder_weights=None)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    train.fit(model, *splits, epochs=1, batch_size=4, seed=0, device="cpu", progress=False, log=None)
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())


def test_checkpoint_roundtrip_gives_the_same_predictions(splits, tmp_path):
    model, history = _fit(splits, tmp_path, epochs=1)
    loaded, ckpt = train.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["settings"]["seed"] == 3 and ckpt["history"] == history
    assert loaded.config == model.config
    x = torch.stack([splits[1][i]["image"] for i in range(len(splits[1]))])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_evaluate_counts_cover_every_pixel(splits):
    model = build_model(False, encoder_weights=None)
    loader = train.make_loader(splits[1], 3, False)
    ev = train.evaluate(model, loader, torch.device("cpu"), keep_probs=True)
    assert ev["counts"].shape == (4, 4) and (ev["counts"].sum(1) == 32 * 32).all()
    assert ev["ids"] == splits[1].ids and ev["probs"].shape == (4, 1, 32, 32)


def test_device_resolution():
    assert train.resolve_device("cpu").type == "cpu"
    assert train.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            train.resolve_device("cuda")
