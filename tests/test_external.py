"""External test sets: reading their layouts, refusing what cannot be paired, the overlays of
helpers.evaluate, and the main job scoring them (its tiny run: conftest.headless_run)."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import external_folders, main_args, write_pair
from helpers.tools import reproduce
from helpers.errors import DataError
from helpers.evaluate import main as evaluate_main
from helpers.external import check_readable, external_sets, find_set, parse_spec
from helpers.folders import SPLITS
from helpers.overlays import OVERLAY_SUFFIX, outline
from test_evaluate import one_thread  # noqa: F401 (a fixture shared with test_evaluate)


@pytest.fixture
def folders(tmp_path):
    return external_folders(tmp_path, n=4)


def ids(s):
    return [x.id for x in s.samples]


def test_spec_names_and_folders(tmp_path):
    assert parse_spec(None) == [] and parse_spec(" , ") == []
    assert parse_spec(f"{tmp_path}/a, PH2={tmp_path}/b") == [(None, tmp_path / "a"), ("PH2", tmp_path / "b")]
    with pytest.raises(DataError, match="name or folder is empty"):
        parse_spec("=x")


def test_ph2_like_bmp_folder_and_images_masks_pair(folders):
    ph2 = find_set(folders["ph2"], "PH2")
    assert (ph2.name, ph2.layout, ph2.detail) == ("PH2", "one folder", "masks <stem>_lesion.*")
    assert ids(ph2) == ["IMD001", "IMD002", "IMD003", "IMD004"]
    assert all(s.mask.name == f"{s.id}_lesion.bmp" for s in ph2.samples)
    clinic = find_set(folders["clinic"])
    assert (clinic.name, clinic.layout, clinic.detail) == ("clinic", "images+masks", "masks named as their images")
    assert [s.mask.name for s in clinic.samples] == [f"case-{k}.png" for k in range(1, 5)]
    check_readable([ph2, clinic], log=lambda line: None)


def test_the_ph2_archive_tree_and_the_isic_layout(tmp_path, folders, tiny_isic):
    tree = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    for bmp in sorted(folders["ph2"].glob("IMD00?.bmp")):
        case = tree / bmp.stem
        (case / f"{bmp.stem}_Dermoscopic_Image").mkdir(parents=True)
        (case / f"{bmp.stem}_lesion").mkdir()
        shutil.copy(bmp, case / f"{bmp.stem}_Dermoscopic_Image" / bmp.name)
        shutil.copy(bmp.with_name(f"{bmp.stem}_lesion.bmp"), case / f"{bmp.stem}_lesion" / f"{bmp.stem}_lesion.bmp")
    (tree / "IMD001" / "IMD001_roi").mkdir()  # PH2's colour-region folders are not read
    s = find_set(tmp_path / "PH2Dataset")
    assert s.layout == "ph2" and ids(s) == ["IMD001", "IMD002", "IMD003", "IMD004"] and s.name == "PH2Dataset"
    isic = find_set(tiny_isic)
    assert isic.layout == "isic2016" and isic.detail == "test split" and len(isic.samples) == 4


def test_a_suffix_is_read_off_the_names(tmp_path, folders):
    images = sorted(folders["clinic"].glob("images/*.jpg"))
    for where, mask_name in ((tmp_path / "a", "{stem}_mask.png"), (tmp_path / "b", "{stem}_Segmentation.PNG")):
        (where / "images").mkdir(parents=True)
        (where / "Masks").mkdir()
        for img in images:
            shutil.copy(img, where / "images" / img.name)
            shutil.copy(folders["clinic"] / "masks" / f"{img.stem}.png", where / "Masks" / mask_name.format(stem=img.stem))
    assert find_set(tmp_path / "a").detail == "masks <stem>_mask.*"
    assert find_set(tmp_path / "b").detail == "masks <stem>_segmentation.*"


def test_two_folders_as_isic_2017_and_2018_ship_them(tmp_path, folders):
    root = tmp_path / "isic2018"
    images, masks = root / "ISIC2018_Task1-2_Test_Input", root / "ISIC2018_Task1_Test_GroundTruth"
    images.mkdir(parents=True)
    masks.mkdir()
    for k, img in enumerate(sorted(folders["clinic"].glob("images/*.jpg"))):
        shutil.copy(img, images / f"ISIC_{k:07d}.jpg")
        shutil.copy(folders["clinic"] / "masks" / f"{img.stem}.png", masks / f"ISIC_{k:07d}_segmentation.png")
    (images / "LICENSE.txt").write_text("CC-0")
    shutil.copy(images / "ISIC_0000000.jpg", images / "ISIC_0000000_superpixels.png")  # as ISIC 2017 ships them
    with pytest.warns(UserWarning) as caught:
        s = find_set(root)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "ignored 1 file(s)" in messages[1] and "LICENSE.txt" in messages[1]
    assert "ignored 1 ISIC superpixel map(s)" in messages[0] and "ISIC_0000000_superpixels.png" in messages[0]
    assert s.layout == "two folders" and s.detail == "masks <stem>_segmentation.*" and len(s.samples) == 4


def test_stems_that_start_with_another_stem_still_pair(tmp_path):
    for stem in ("IMD1", "IMD10", "IMD100"):
        write = tmp_path / "set"
        write.mkdir(exist_ok=True)
        Image.new("RGB", (20, 10), "gray").save(write / f"{stem}.bmp")
        Image.new("L", (20, 10), 255).save(write / f"{stem}_lesion.bmp")
    s = find_set(tmp_path / "set")
    assert ids(s) == ["IMD1", "IMD10", "IMD100"] and all(x.mask.stem == f"{x.id}_lesion" for x in s.samples)


def test_what_cannot_be_paired_is_named(tmp_path, folders):
    with pytest.raises(DataError, match="folder not found"):
        find_set(tmp_path / "absent")
    (folders["clinic"] / "images" / "extra.jpg").write_bytes((folders["clinic"] / "images" / "case-1.jpg").read_bytes())
    with pytest.raises(DataError, match=r"1 image\(s\) without a mask .*extra\.jpg"):
        find_set(folders["clinic"])
    (folders["ph2"] / "IMD001_lesion.bmp").rename(folders["ph2"] / "IMD001_mask.bmp")
    with pytest.raises(DataError, match=r"image\(s\) without a mask|mask\(s\) without an image"):
        find_set(folders["ph2"])
    lone = tmp_path / "lone"
    (lone / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="has images/ but no masks/"):
        find_set(lone)
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGB", (8, 8)).save(plain / "a.png")
    Image.new("RGB", (8, 8)).save(plain / "b.png")
    with pytest.raises(DataError, match="images but no masks"):
        find_set(plain)
    with pytest.raises(DataError, match="two external test sets are named 'clinic'"):
        (folders["clinic"] / "images" / "extra.jpg").unlink()
        external_sets(f"{folders['clinic']},clinic={folders['clinic']}")


def test_an_unreadable_file_is_named_before_training(tmp_path, folders, capsys):
    bad = folders["ph2"] / "IMD002.bmp"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match="IMD002.bmp"):
        check_readable([find_set(folders["ph2"])], log=lambda line: None)
    args = main_args(tmp_path, "--name", "bad", "--external", str(folders["ph2"]))
    assert reproduce.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "IMD002.bmp" in err
    run = tmp_path / "runs" / "bad"
    assert not any((run / m).exists() for m in reproduce.MODELS)  # nothing trained
    assert not (run / "notebooks").exists()


def test_outline_is_a_band_on_the_border():
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:50] = True
    band = outline(mask)
    assert band[20, 40] and band[30, 30] and not band[30, 40] and not band[5, 5]
    assert not outline(np.zeros((10, 10), bool)).any() and not outline(np.ones((10, 10), bool)).any()


def test_evaluate_writes_overlays_and_a_sheet_of_the_worst(runs, tmp_path, capsys):
    out = tmp_path / "out"
    root = runs["root"]
    args = ["--checkpoint", str(runs["mixed"]), "--images", str(root / SPLITS["test"][0]),
            "--masks", str(root / SPLITS["test"][1]), "--out", str(out), "--overlays", "--worst", "3", "--quiet"]
    assert evaluate_main(args) == 0
    assert "with overlays and the contact sheet" in capsys.readouterr().out
    images = sorted((root / SPLITS["test"][0]).glob("*.jpg"))
    overlays = sorted((out / "overlays").iterdir())
    assert [p.name for p in overlays] == [f"{p.stem}{OVERLAY_SUFFIX}" for p in images]
    with open(out / "per_image.csv") as f:
        scores = {r["id"]: float(r["jaccard"]) for r in csv.DictReader(f)}
    for img, ov in zip(images, overlays):
        with Image.open(img) as a, Image.open(ov) as b:
            assert b.format == "JPEG" and b.size == a.size
            r, g, b = np.asarray(b.convert("RGB")).astype(int).transpose(2, 0, 1)
        green, magenta = (g > r + 100) & (g > b + 100), (r > g + 100) & (b > g + 100)  # no skin colour is either
        assert green.any()  # every tiny test mask has a lesion, so a true outline
        pred = np.asarray(Image.open(out / "masks" / f"{img.stem}_segmentation.png")) > 0
        assert magenta.any() == bool(pred.any() and not pred.all())
        if magenta.any():  # the magenta band is the predicted mask's outline
            assert magenta[outline(pred)].mean() > 0.8
    summary = json.loads((out / "summary.json").read_text())
    with Image.open(out / "worst.jpg") as sheet:
        assert sheet.format == "JPEG" and sheet.width == 4 * 256 and sheet.height > 256
    assert summary["contact_sheet"] == str(out / "worst.jpg") and len(scores) == 4

    # without masks: overlays of the prediction alone, and no sheet (nothing to rank by)
    only = tmp_path / "only"
    assert evaluate_main(["--checkpoint", str(runs["mixed"]), "--images", str(root / SPLITS["test"][0]),
                          "--out", str(only), "--overlays", "--quiet"]) == 0
    assert len(list((only / "overlays").iterdir())) == 4 and not (only / "worst.jpg").exists()
    assert evaluate_main(["--checkpoint", str(runs["mixed"]), "--images", str(root / SPLITS["test"][0]),
                          "--out", str(only), "--overlays", "--worst", "0"]) == 1


def test_the_main_job_scores_every_external_set(headless_run):
    run, ext = headless_run.run, headless_run.external
    results = json.loads((run / "results.json").read_text())
    assert [s["name"] for s in results["external_sets"]] == ["PH2", "clinic"]
    assert [s["layout"] for s in results["external_sets"]] == ["one folder", "images+masks"]
    for model in reproduce.MODELS:
        record = json.loads((run / model / "external.json").read_text())
        for slug, n in (("PH2", 5), ("clinic", 5)):
            res = record["results"][slug]
            assert [r["seed"] for r in res["per_seed"]] == [0, 1]
            assert res["macro"]["jaccard"]["mean"] == pytest.approx(
                np.mean([r["macro"]["jaccard"] for r in res["per_seed"]]))
            for seed in (0, 1):
                folder = run / model / f"seed{seed}" / "external" / slug
                masks = sorted((folder / "masks").iterdir())
                assert len(masks) == n
                with open(folder / "per_image.csv") as f:
                    rows = list(csv.DictReader(f))
                assert len(rows) == n and np.mean([float(r["jaccard"]) for r in rows]) == pytest.approx(
                    res["per_seed"][seed]["macro"]["jaccard"])
                for mask in masks:  # at each image's original size
                    source = ext["ph2"] / f"{mask.name.split('_')[0]}.bmp" if slug == "PH2" else \
                        ext["clinic"] / "images" / f"{mask.name.split('_')[0]}.jpg"
                    with Image.open(mask) as m, Image.open(source) as s:
                        assert m.size == s.size
    table = results["generalization_jaccard"]
    assert len(table) == 3 * 3
    for row in table:
        lo, hi = (float(x) for x in row["95% interval (images)"].split("-"))
        assert 0 <= lo <= float(row["jaccard mean ± sd"].split(" ")[0]) <= hi <= 1
    assert [r["data set"] for r in table[:3]][1:] == ["external: PH2", "external: clinic"]
    assert "external test set PH2 (original size): model 1 Jaccard" in headless_run.out
    for row in results["paired_original_jaccard_by_seed"]:
        assert row["seed"] in (0, 1) and row["ci_low"] <= row["mean_difference"] <= row["ci_high"]
