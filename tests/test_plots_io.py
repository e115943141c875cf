import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from types import SimpleNamespace

from helpers import io, plots, scorecard


class _Split:
    """What scorecard.data_facts reads of a split: its images and masks, and its length."""

    def __init__(self, images, masks):
        self.images, self.masks = images, masks

    def __len__(self):
        return len(self.images)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(3, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    masks = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).to(torch.uint8)
    return images, masks, ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]


def _check(fig, tmp_path, *texts):
    assert isinstance(fig, Figure)
    path = plots.save_figure(fig, tmp_path / "f.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 200
    shown = " ".join(t.get_text() for t in fig.texts) + " " + " ".join(
        ax.get_title() for ax in fig.axes)
    for text in texts:
        assert text in shown


def test_every_figure_names_its_data_source_and_weights(batch, tmp_path):
    images, masks, ids = batch
    note = plots.provenance("SYNTHETIC demo set", "random")
    assert note == "data: SYNTHETIC demo set | encoder weights: random"
    history = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e} for e in (1, 2, 3)]
    d = SimpleNamespace(source="synthetic", label="SYNTHETIC demo set", val=None, test=None, train=_Split(images, masks))
    facts = scorecard.data_facts(d, 16)
    _check(plots.intensity_histograms(facts, plots.provenance("SYNTHETIC demo set")), tmp_path, "SYNTHETIC",
           "3 training images")
    _check(plots.sample_grid(images, masks, ids, note), tmp_path, "SYNTHETIC", "ISIC_0000002")
    _check(plots.loss_curves({"m": history}, note), tmp_path, "encoder weights: random")
    _check(plots.predictions(images.float() / 255, masks, masks, ids, [0.9, 0.5, 0.1], "best", note),
           tmp_path, "IoU 0.900", "SYNTHETIC")
    _check(plots.iou_scatter([0.2, 0.5], [0.4, 0.3], "A", "B", note), tmp_path, "better on 1 of 2 images")


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "out.json"
    io.write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        io.write_json(path, {"a": float("nan")})  # not valid JSON: refused before the rename
    assert path.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_outputs_are_written_only_through_temporary_names():
    """Every figure, CSV, JSON, mask, cache and checkpoint goes to a temporary name first (helpers.io):
    a crash mid-write leaves the old file or none, never half a file. The only plain writes are the
    downloader's resumable .part file and its extraction into a temporary folder (renamed after), and
    appends to a log (the run's output log), which keep what the log held."""
    import re
    from pathlib import Path

    helpers_dir = Path(io.__file__).parent
    for path in sorted(helpers_dir.rglob("*.py")):
        if path.name == "io.py":
            continue
        source = path.read_text()
        targets = (re.findall(r"torch\.save\(.*?,\s*(\w+)\)", source, re.S)  # its last argument
                   + re.findall(r"(?:\.savefig|(?<!torch)\.save)\(\s*(\w+)", source))
        assert all(t == "tmp" for t in targets), f"{path.name} writes {targets} directly"
        assert not re.search(r"\.write_(text|bytes)\(", source), f"{path.name}: use helpers.io"
        opened = re.findall(r"\bopen\(([^)]*)\)", source)
        writes = [o for o in opened if re.search(r"[\"'][wx]b?[\"']|\"ab\" if", o)]
        assert not writes or path.name == "download.py", f"{path.name} opens {writes} for writing"


def test_loss_curves_name_the_split_and_a_training_loss_that_is_not_bce():
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e} for e in (1, 2, 3)]
    fig = plots.loss_curves({"m": history}, "note", objectives={"m": "BCE + soft Dice"})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train (BCE + soft Dice)", "validation"]
    from helpers import training

    runs = {"a": {"history": history, "metrics": {"recipe": {"loss": "bce_dice"}}},
            "b": {"history": history, "metrics": {}}}  # a run saved before recipes were recorded
    fig = training.loss_figure(runs, "note", "t")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "a: train (BCE + soft Dice)", "a: validation", "b: train", "b: validation"]
