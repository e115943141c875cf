"""Odd and hostile files against the readers, `helpers.tools.data check` and the main job: each is read
correctly or refused in one line naming it; never a traceback, never a half-written output."""

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import ExifTags, Image

from helpers import cache, images
from helpers.tools import data as data_cli, reproduce
from helpers.errors import DataError
from helpers.folders import SPLITS

from conftest import write_pair


def _odd_folder(root):
    """A training split of 15 images, 7 of them odd in a way real folders are; returns the ids named in warnings."""
    for i in range(15):
        write_pair(root, "train", i, size=(48, 36))
    image_dir, mask_dir = (root / name for name in SPLITS["train"])
    jpg = lambda i: image_dir / f"ISIC_{i:07d}.jpg"
    Image.new("RGB", (1, 1), (90, 50, 30)).save(jpg(1))  # 1 x 1, all lesion
    Image.new("L", (1, 1), 255).save(mask_dir / "ISIC_0000001_Segmentation.png")
    Image.open(jpg(2)).convert("CMYK").save(jpg(2))  # a CMYK JPEG
    grey = np.asarray(Image.open(jpg(3)).convert("L")).astype(np.uint16) * 257
    jpg(3).unlink()
    Image.fromarray(grey).save(image_dir / "ISIC_0000003.png")  # a 16-bit grey PNG
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8
    Image.open(jpg(4)).save(jpg(4), exif=exif)  # an EXIF Orientation tag
    Image.new("L", (48, 36), 0).save(mask_dir / "ISIC_0000005_Segmentation.png")  # no lesion
    Image.open(jpg(6)).convert("P").save(image_dir / "ISIC_0000006.png", transparency=0)  # palette with transparency
    jpg(6).unlink()
    lesion = np.asarray(Image.open(mask_dir / "ISIC_0000007_Segmentation.png")) > 0
    Image.fromarray(lesion.astype(np.uint16) * 65535).save(mask_dir / "ISIC_0000007_Segmentation.png")  # 16-bit mask
    return {"small_images": ["ISIC_0000001"], "no_lesion": ["ISIC_0000005"], "no_background": ["ISIC_0000001"]}


def test_odd_files_of_a_training_split_alone_go_through_the_main_job_with_notes_and_named_warnings(
        tmp_path, capsys, monkeypatch):
    """A clinic's own images, odd files among them, through the main job's data handling: each converted with one
    note, named in warnings, counted in results.json; every notebook is given the folder; a seeded 20% validation
    split is held out, written to split.json and scored; Model 3's recipe options (augmentation, BCE + Dice,
    cosine, best validation epoch) train on it. What the notebooks do with data is run in this process, as
    notebook 04 runs it (the notebooks themselves run in the tiny pipeline tests), so nothing else trains."""
    from helpers import data, settings, training

    root = tmp_path / "clinic"
    expected = _odd_folder(root)
    assert data_cli.main(["check", str(root), "--quiet", "--image-size", "32"]) == 0
    assert "no problems found (3 warning(s) above" in capsys.readouterr().out
    given = []
    monkeypatch.setattr(reproduce, "run_notebook", lambda source, output, parameters, stream=None:
                        given.append((source.name, parameters)) or 0.0)
    blank = {"mean": 0.0}
    monkeypatch.setattr(reproduce, "collect_results", lambda cfg, timings, decision: {
        "data_source": "-", "encoder_weights_used": "random", "external": {}, "notebook_seconds": timings,
        "decision": decision, "models": {m: {"macro": {"dice": blank}, "original": {"jaccard": blank}}
                                         for m in reproduce.MODELS}})
    args = ["--data-dir", str(root), "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--encoder-weights", "none", "--no-html", "--runs-dir", str(tmp_path / "runs"), "--name", "odd",
            "--figures-dir", str(tmp_path / "figures"), "--cache-dir", str(tmp_path / "cache"), "--m3-epochs", "3"]
    assert reproduce.main(args) == 0, capsys.readouterr()
    out, run = capsys.readouterr().out, tmp_path / "runs" / "odd"
    for note in ("ISIC_0000002.jpg: CMYK image converted to RGB", "ISIC_0000003.png: 16-bit I;16 image scaled",
                 "ISIC_0000004.jpg: EXIF orientation 8 not applied", "ISIC_0000006.png: P image converted to RGB"):
        assert note in out
    assert ("warning: train: 1 image(s) smaller than 16 px on a side (under half the 32 px working size); they still "
            "train: ISIC_0000001") in out
    assert f"reproduce: 3 data warning(s); the ids are in {run / 'data_warnings.json'}" in out
    found = json.loads((run / "data_warnings.json").read_text())
    assert found == {"working_size": 32, "train": expected}
    results = json.loads((run / "results.json").read_text())
    assert results["data_warnings"] == 3 and "training split only" in results["decision"]
    assert [name for name, _ in given] == list(reproduce.NOTEBOOKS)
    parameters = dict(given[3][1])
    assert parameters["DATA_DIR"] == str(root) and parameters["M3_EPOCHS"] == 3
    saved = json.loads(Path(parameters["SETTINGS"]).read_text())
    assert (saved["data_dir"], saved["cache_dir"], saved["batch_size"], saved["m3_epochs"]) == (
        str(root), str(tmp_path / "cache"), 4, 3)

    # notebook 04's data and training, with the settings it was given (the recipe: the best validation epoch)
    cfg = settings.RunConfig.load(parameters["SETTINGS"], data=parameters["DATA"], data_dir=parameters["DATA_DIR"])
    d = data.prepare_data(cfg, log=lambda *a: None)
    assert "20% validation split (split seed 0, 3 images)" in d.label and d.scored_name == "validation"
    split = json.loads((run / "split.json").read_text())
    assert sorted(split["train_ids"] + split["validation_ids"]) == [f"ISIC_{i:07d}" for i in range(15)]  # all train
    assert split["n_validation"] == 3 and split["fraction"] == 0.2 and not set(split["train_ids"]) & set(split["validation_ids"])
    (m3,) = training.train_seeds(cfg, d, training.new_model(cfg, freeze_encoder=False, decoder="unet"),
                                   "model3_unet", {**settings.model3_recipe(cfg), "select": "best"})
    assert m3["metrics"]["recipe"]["select"] == "best" and m3["metrics"]["selected_on_scored_split"] is True
    assert m3["metrics"]["n_test"] == 3 and m3["metrics"]["scored_split"] == "validation"
    history = json.loads((run / "model3_unet" / "seed0" / "history.json").read_text())
    assert len(history["history"]) == 3 and "val_iou" in history["history"][0]
    assert all(np.isfinite(row["train_loss"]) for row in history["history"])
    assert history["settings"]["n_train"] == 12 and history["settings"]["loss"] == "BCEWithLogitsLoss + soft Dice"
    rows = (run / "model3_unet" / "seed0" / "original" / "per_image.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == split["validation_ids"]  # scored on the held-out ids only


FORMATS = {"PNG": ("RGB", "L", "P", "RGBA", "LA", "1", "I;16"), "JPEG": ("RGB", "L", "CMYK"),
           "BMP": ("RGB", "L", "P", "1"), "TIFF": ("RGB", "L", "I;16", "F", "CMYK")}


@st.composite
def image_files(draw):
    """The bytes of an image file: valid (any format, mode and size), truncated, with bytes changed, or random."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    arr = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (height, width), dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16) * 257)
    elif mode == "F":
        img = Image.fromarray(arr.astype(np.float32) / 255)
    else:
        img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    raw = buf.getvalue()
    damage = draw(st.sampled_from(["none", "truncated", "bytes changed", "random bytes"]))
    if damage == "truncated":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif damage == "bytes changed":
        for at in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
            raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1:]
    elif damage == "random bytes":
        raw = draw(st.binary(max_size=300))
    return raw


@settings(max_examples=300, deadline=None)
@given(raw=image_files())
def test_readers_return_a_valid_image_or_a_named_error(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ISIC_0000001.png"
        path.write_bytes(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # a Pillow warning must become a note naming the file
            warnings.simplefilter("error", RuntimeWarning)
            try:
                img, notes = images.read_image(path)
            except DataError as exc:
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            else:
                arr = np.asarray(img)
                assert img.mode == "RGB" and arr.dtype == np.uint8 and arr.shape == (img.height, img.width, 3)
                assert all(n.startswith(f"{path.name}: ") for n in notes)
            try:
                lesion, notes, _ = images.read_mask(path)
            except DataError as exc:
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            else:
                assert lesion.dtype == bool and lesion.ndim == 2
                assert all(n.startswith(f"{path.name}: ") for n in notes)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=image_files(), as_mask=st.booleans())
def test_check_and_the_cache_give_one_named_error_line_and_no_partial_file(raw, as_mask):
    with tempfile.TemporaryDirectory() as tmp:
        root, cache_dir = Path(tmp) / "isic", Path(tmp) / "cache"
        for i in range(3):
            write_pair(root, "train", i, size=(40, 30))
        image_dir, mask_dir = (root / name for name in SPLITS["train"])
        path = mask_dir / "ISIC_0000001_Segmentation.png" if as_mask else image_dir / "ISIC_0000001.jpg"
        path.write_bytes(raw)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = data_cli.main(["check", str(root), "--quiet"])
        assert status in (0, 1) and "Traceback" not in err.getvalue() + out.getvalue()
        if status == 0:
            assert err.getvalue() == ""
        else:
            line = err.getvalue()  # names the file, or (an image and mask of other sizes) the two of its pair
            assert line.startswith(f"error: {root}: 1 problem(s)") and line.count("\n") == 1
            assert f"{path}: " in line or "ISIC_0000001_Segmentation.png: mask is" in line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                built = cache.load_cached(root, "train", 16, cache_dir=cache_dir, progress=False)
            except DataError as exc:
                assert str(exc) in line and status == 1
                assert not cache_dir.exists() or not list(cache_dir.iterdir())  # nothing, not half a file
            else:
                assert status == 0 and built["images"].shape == (3, 3, 16, 16)
                assert [p.name[:10] for p in cache_dir.iterdir()] == ["train-16px"]


def test_every_reader_opens_files_through_helpers_images():
    """One place opens image files (a new Image.open elsewhere would bypass the pixel limit and the notes)."""
    helpers_dir = Path(images.__file__).parent
    opening = [p.name for p in sorted(helpers_dir.rglob("*.py")) if "Image.open(" in p.read_text()]
    assert opening == ["images.py"]


def test_a_raised_pixel_limit_goes_to_every_notebook_that_reads_images(tmp_path):
    """--max-pixels reaches each notebook that reads image files through the run's settings file (SETTINGS,
    which the headless run passes each notebook), so a raised limit holds after training too."""
    import papermill as pm

    from helpers.settings import RunConfig
    from nbtiny import NOTEBOOKS

    cfg = RunConfig(max_pixels=300_000_000, run_dir=str(tmp_path))
    assert RunConfig.load(cfg.write(reproduce.notebook_parameters(cfg)["SETTINGS"])).max_pixels == 300_000_000
    takes = [p.name for p in NOTEBOOKS if "SETTINGS" in pm.inspect_notebook(str(p))
             and "RunConfig.load(SETTINGS," in p.read_text()]
    assert takes == list(reproduce.NOTEBOOKS)  # every notebook reads the run's settings
    assert [p.name for p in NOTEBOOKS if "prepare_data(" in p.read_text()] == list(reproduce.NOTEBOOKS[:4])
