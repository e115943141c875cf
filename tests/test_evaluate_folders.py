"""helpers.evaluate --images/--masks: any two folders score as the ISIC layout and the official scorer do."""

import shutil

import numpy as np
import pytest
from PIL import Image

from helpers.folders import SPLITS, DataWarning, read_mask
from helpers.evaluate import evaluate_checkpoint, evaluate_folders, main
from helpers.pairing import pair_folders
from test_evaluate import METRICS, one_thread, read_csv  # noqa: F401 (a fixture shared with test_evaluate)

from isic_challenge_scoring.segmentation import SegmentationScore

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in Series.rename")  # the scorer's pandas use


def mask_image(lesion: np.ndarray, form: str) -> Image.Image:
    """bool H x W -> a mask image in ``form``: "0/255" or "0/1" grayscale, or "palette" (index 1 is lesion;
    its colour is darker than the background's, so a luminance threshold would read it inverted)."""
    if form == "palette":
        img = Image.fromarray(lesion.astype(np.uint8), mode="P")
        img.putpalette([255, 255, 255, 120, 0, 0])
        return img
    return Image.fromarray(lesion.astype(np.uint8) * (255 if form == "0/255" else 1), mode="L")


def isic_test_pairs(root):
    """(ISIC id, image, mask) of the tiny test split."""
    images = sorted((root / SPLITS["test"][0]).glob("*.jpg"))
    return [(p.stem, p, root / SPLITS["test"][1] / f"{p.stem}_Segmentation.png") for p in images]


def write_copies(root, images_dir, masks_dir, image_name, mask_name, forms=("0/255",)):
    """The test split's pairs under other names: image_name(i) with the same pixels (a .jpg is copied
    byte for byte, other formats re-encoded losslessly), mask_name(i) in forms[i % len(forms)]."""
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    for i, (_, image, mask) in enumerate(isic_test_pairs(root)):
        target = images_dir / image_name(i)
        if target.suffix.lower() == ".jpg":
            shutil.copy(image, target)
        else:
            Image.open(image).save(target)
        mask_image(read_mask(mask)[0], forms[i % len(forms)]).save(masks_dir / mask_name(i))


def ph2_style(root, folder, forms=("0/255",)):
    """PH2 naming: images/IMD00i.bmp with masks/IMD00i_lesion.bmp."""
    write_copies(root, folder / "images", folder / "masks", lambda i: f"IMD00{i}.bmp",
                 lambda i: f"IMD00{i}_lesion.bmp", forms)
    return folder / "images", folder / "masks"


def same_numbers(folder_summary, folder_out, isic_summary, isic_out, ids):
    """The same scores, per image and overall, and the same predicted masks under the folder's ids."""
    assert folder_summary["macro"] == isic_summary["macro"] and folder_summary["micro"] == isic_summary["micro"]
    rows, isic_rows = read_csv(folder_out / "per_image.csv"), read_csv(isic_out / "per_image.csv")
    assert [r["id"] for r in rows] == ids
    assert [{**r, "id": None} for r in rows] == [{**r, "id": None} for r in isic_rows]
    for ident, isic_row in zip(ids, isic_rows):
        with Image.open(folder_out / "masks" / f"{ident}_segmentation.png") as a, \
                Image.open(isic_out / "masks" / f"{isic_row['id']}_segmentation.png") as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_ph2_and_clinic_folders_give_the_isic_layout_numbers(runs, tmp_path):
    root = runs["root"]
    isic = evaluate_checkpoint(runs["mixed"], root, "test", tmp_path / "isic", progress=False)
    assert 0 < isic["macro"]["jaccard"] < 1

    images, masks = ph2_style(root, tmp_path / "ph2")
    ph2 = evaluate_folders(runs["mixed"], images, masks, tmp_path / "ph2-out", mask_suffix="_lesion", progress=False)
    same_numbers(ph2, tmp_path / "ph2-out", isic, tmp_path / "isic", [f"IMD00{i}" for i in range(4)])
    assert (ph2["images_dir"], ph2["masks_dir"], ph2["mask_suffix"]) == (str(images), str(masks), "_lesion")
    assert ph2["split"] is None and ph2["data_dir"] is None and ph2["data_source"] == "image folders"

    clinic = tmp_path / "clinic"  # images and masks in one folder; the suffix and extensions in other cases
    write_copies(root, clinic, clinic, lambda i: f"Patient {i}.JPG", lambda i: f"Patient {i}_MASK.png")
    (clinic / "notes.txt").write_text("not an image")
    with pytest.warns(DataWarning, match=r"ignored 1 file\(s\) that are not images PIL reads: notes.txt"):
        summary = evaluate_folders(runs["mixed"], clinic, clinic, tmp_path / "clinic-out", mask_suffix="_mask",
                                   progress=False)
    same_numbers(summary, tmp_path / "clinic-out", isic, tmp_path / "isic", [f"Patient {i}" for i in range(4)])


def test_folder_numbers_equal_the_official_scorer_on_isic_named_copies(runs, tmp_path, capsys):
    images, masks = ph2_style(runs["root"], tmp_path / "ph2")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(runs["mixed"]), "--images", str(images), "--masks", str(masks),
                 "--mask-suffix", "_lesion", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"evaluate: 4 images of {images}, Jaccard ")
    truth, pred = tmp_path / "isic-truth", tmp_path / "isic-pred"
    truth.mkdir(), pred.mkdir()
    for i, mask in enumerate(sorted(masks.iterdir())):
        Image.open(mask).convert("L").save(truth / f"ISIC_{i:07d}_Segmentation.png")
        shutil.copy(out / "masks" / f"IMD00{i}_segmentation.png", pred / f"ISIC_{i:07d}_segmentation.png")
    official = SegmentationScore.from_dir(truth, pred).macro_average
    summary = evaluate_folders(runs["mixed"], images, masks, None, mask_suffix="_lesion", progress=False)
    for name in METRICS:
        assert summary["macro"][name] == pytest.approx(float(official[name]), abs=1e-6), name


def test_zero_one_and_palette_masks_score_as_zero_255_ones(runs, tmp_path):
    root = runs["root"]
    for _, _, mask in isic_test_pairs(root):
        expected = read_mask(mask)[0]
        for form in ("0/1", "palette"):
            mask_image(expected, form).save(tmp_path / "m.png")
            lesion, notes, non_binary = read_mask(tmp_path / "m.png")
            assert np.array_equal(lesion, expected) and not non_binary, form
            assert notes == (["m.png: palette mask read by index (non-zero index is lesion)"] if form == "palette" else [])
    images, masks = ph2_style(root, tmp_path / "ph2")
    reference = evaluate_folders(runs["mixed"], images, masks, None, mask_suffix="_lesion", progress=False)

    images, masks = ph2_style(root, tmp_path / "mixed-forms", forms=("0/1", "palette"))
    summary = evaluate_folders(runs["mixed"], images, masks, None, mask_suffix="_lesion", progress=False)
    assert summary["macro"] == reference["macro"] and summary["micro"] == reference["micro"]

    isic = evaluate_checkpoint(runs["mixed"], root, "test", None, progress=False)  # the ISIC layout reads them alike
    for i, (_, _, mask) in enumerate(isic_test_pairs(root)):
        mask_image(read_mask(mask)[0], ("0/1", "palette")[i % 2]).save(mask)
    assert evaluate_checkpoint(runs["mixed"], root, "test", None, progress=False)["macro"] == isic["macro"]


def test_images_folder_alone_writes_masks_only(runs, tmp_path, capsys):
    images, _ = ph2_style(runs["root"], tmp_path / "ph2")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(runs["mixed"]), "--images", str(images), "--out", str(out), "--quiet"]) == 0
    assert "4 images of" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"IMD00{i}_segmentation.png" for i in range(4)]
    assert not (out / "per_image.csv").exists()
    assert [s.mask for s in pair_folders(images)] == [None] * 4


def _unpaired_image(images, masks):
    (masks / "IMD003_lesion.bmp").unlink()
    return f"1 image(s) without a mask <stem>_lesion.* in {masks}: IMD003.bmp"


def _unpaired_mask(images, masks):
    (images / "IMD003.bmp").unlink()
    return f"1 mask(s) without an image in {images}: IMD003_lesion.bmp"


def _duplicate_stem(images, masks):
    shutil.copy(images / "IMD001.bmp", images / "IMD001.png")
    return f"{images / 'IMD001.png'}: duplicate stem 'IMD001' (also IMD001.bmp); keep one of the two"


def _duplicate_mask(images, masks):
    Image.open(masks / "IMD001_lesion.bmp").save(masks / "IMD001_Lesion.png")
    return f"{masks / 'IMD001_lesion.bmp'}: duplicate stem 'IMD001_lesion' (also IMD001_Lesion.png)"


def _missing_folder(images, masks):
    shutil.rmtree(masks)
    return f"{masks}: masks folder not found"


def _wrong_suffix(images, masks):
    for path in masks.iterdir():
        path.rename(path.with_name(path.name.replace("_lesion", "_seg")))
    return "(did you mean --mask-suffix _seg?)"


def _bomb(images, masks):
    from conftest import png_claiming

    (images / "IMD002.bmp").write_bytes(png_claiming(20000, 13000))  # read by content, whatever its name
    return (f"{images / 'IMD002.bmp'}: image is 20000x13000 (260.0 million pixels), above the limit of 100 million "
            "(a guard against decompression bombs); pass --max-pixels 260000000 to read it")


def _truncated_mask(images, masks):
    path = masks / "IMD002_lesion.bmp"
    path.write_bytes(path.read_bytes()[:200])
    return f"{path}: unreadable or truncated image file"


FOLDER_FAULTS = {"unpaired image": _unpaired_image, "unpaired mask": _unpaired_mask,
                 "duplicate stem": _duplicate_stem, "duplicate mask": _duplicate_mask,
                 "missing folder": _missing_folder, "wrong suffix": _wrong_suffix,
                 "image above the pixel limit": _bomb, "truncated mask": _truncated_mask}


@pytest.mark.parametrize("fault", [*FOLDER_FAULTS, "both --data-dir and --images"])
def test_folder_errors_are_one_line_and_write_nothing(runs, tmp_path, capsys, fault):
    images, masks = ph2_style(runs["root"], tmp_path / "ph2")
    out = tmp_path / "out"
    args = ["--checkpoint", str(runs["mixed"]), "--images", str(images), "--masks", str(masks), "--out", str(out),
            "--quiet"]
    if fault in FOLDER_FAULTS:
        expected = FOLDER_FAULTS[fault](images, masks)
        args += ["--mask-suffix", "_lesion"]
    else:
        expected = "give either --data-dir (the ISIC 2016 layout) or --images [--masks] (any two folders), not both"
        args += ["--data-dir", str(runs["root"])]
    assert main(args) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err, err
    assert captured.out == "" and not out.exists()
