import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import cache, folders
from helpers.tools import data
from helpers.folders import SPLITS, DataWarning
from helpers.errors import DataError

from conftest import png_claiming, write_pair


def test_list_split_pairs_by_id_not_sort_order(tiny_isic):
    # a mask listed in a different order (upper-case suffix sorts before) must still pair by id
    mask_dir = tiny_isic / SPLITS["train"][1]
    (mask_dir / "ISIC_0000003_Segmentation.png").rename(mask_dir / "ISIC_0000003_SEGMENTATION.png")
    samples = folders.list_split(tiny_isic, "train")
    assert [s.id for s in samples] == [f"ISIC_{i:07d}" for i in range(6)]
    for s in samples:
        assert s.mask.name.lower() == f"{s.id}_segmentation.png".lower()
        assert s.image.stem == s.id


@pytest.mark.parametrize("ident", ["ISIC_0000000", "ISIC_0011402", "ISIC_9000000", "ISIC_9999999"])
def test_real_and_synthetic_ids_are_both_isic_names(ident):
    assert folders.IMAGE_RE.match(f"{ident}.jpg").group(1) == ident
    assert folders.MASK_RE.match(f"{ident}_Segmentation.png").group(1) == ident


def test_dataset_items_are_float_tensors_of_image_size(tiny_isic):
    ds = cache.load_dataset(tiny_isic, "train", image_size=32, progress=False)
    item = ds[2]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].shape == (1, 32, 32)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["id"] == "ISIC_0000002"
    assert item["size"].tolist() == [34, 48]  # original (height, width)
    assert len(ds) == 6


def _corner_lesion(root, ident, size=(60, 40)):
    """An image of ``size`` (w, h) with a dark lesion in its top-right quarter only, and its mask."""
    w, h = size
    img_dir, mask_dir = (root / name for name in SPLITS["train"])
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((h, w), np.uint8)
    mask[2:h // 2 - 4, w // 2 + 6:w - 3] = 255
    img = np.full((h, w, 3), (230, 180, 160), np.uint8)
    img[mask > 0] = (40, 20, 10)
    img[h - 6:, :5] = (120, 200, 90)  # a green mark bottom-left: which way up the image is
    Image.fromarray(img).save(img_dir / f"{ident}.png")
    Image.fromarray(mask).save(mask_dir / f"{ident}_Segmentation.png")
    return img, mask


@pytest.mark.parametrize("size", [(60, 40), (40, 60)])
def test_masks_stay_on_their_images_lesion_in_every_dataset(tmp_path, size):
    """Each mask covers its own image's lesion, the right way up, in the cached tensors (one item and a
    batch) and in the per-file dataset: a mask transposed, flipped or paired with another image fails."""
    root = tmp_path / "aligned"
    _corner_lesion(root, "ISIC_0000001", size)
    write_pair(root, "train", 2, size=size)
    ds = cache.load_dataset(root, "train", image_size=32, progress=False)
    lazy = cache.FileSegmentation(root, "train", image_size=32)
    batch = ds[[0, 1]]
    for item in (ds[0], lazy[0], {"image": batch["image"][0], "mask": batch["mask"][0]}):
        dark = item["image"].mean(0) < 0.4
        lesion = item["mask"][0] > 0.5
        assert lesion[:16, 16:].sum() > 20 and not lesion[16:].any() and not lesion[:, :16].any()
        assert (dark & lesion).sum() / (dark | lesion).sum() > 0.9
        assert item["image"][1, -1, 0] > item["image"][0, -1, 0]  # the green mark stays bottom-left
    for i in range(2):  # the second pair, a round lesion of its own, too
        dark, lesion = ds[i]["image"].mean(0) < 0.4, ds[i]["mask"][0] > 0.5
        assert (dark & lesion).sum() / (dark | lesion).sum() > 0.8


def test_file_dataset_equals_cached_dataset(tiny_isic, tmp_path):
    lazy = cache.FileSegmentation(tiny_isic, "test", image_size=24)
    cached = cache.load_dataset(tiny_isic, "test", image_size=24, cache_dir=tmp_path / "cache", progress=False)
    for i in range(len(lazy)):
        a, b = lazy[i], cached[i]
        assert a["id"] == b["id"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_mask_resized_with_nearest_and_stays_binary(tiny_isic):
    r = folders.load_sample(folders.list_split(tiny_isic, "train")[0], image_size=17)
    assert set(np.unique(r["mask"]).tolist()) <= {0, 1}
    assert r["image"].shape == (17, 17, 3)


def test_mask_resize_samples_pixels_and_does_not_average_them(tmp_path):
    """51 -> 17 pixels: nearest-neighbour takes source pixel 3i+1 of every block of three. A mask that is
    lesion at exactly those pixels (isolated dots, 1 pixel in 9) comes out all lesion; averaging
    (bilinear) would blur the dots to 1/9 and give all background. The image keeps its bilinear resize."""
    root = tmp_path / "dots"
    img_dir, mask_dir = (root / name for name in SPLITS["train"])
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    mask = np.zeros((51, 51), np.uint8)
    mask[1::3, 1::3] = 255
    Image.fromarray(np.stack([mask] * 3, -1)).save(img_dir / "ISIC_0000000.png")
    Image.fromarray(mask).save(mask_dir / "ISIC_0000000_Segmentation.png")
    r = folders.load_sample(folders.list_split(root, "train")[0], image_size=17)
    assert r["mask"].shape == (17, 17) and r["mask"].min() == 1
    assert r["image"].max() < 128  # the image averaged: its dots blur to about a ninth of 255


def test_missing_folder_is_named(tiny_isic):
    folder = tiny_isic / SPLITS["test"][1]
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(DataError, match="ISBI2016_ISIC_Part1_Test_GroundTruth: mask folder not found"):
        folders.list_split(tiny_isic, "test")


def test_root_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        folders.list_split(tmp_path / "nope", "train")


def test_image_without_mask_and_mask_without_image_are_named(tiny_isic):
    (tiny_isic / SPLITS["train"][1] / "ISIC_0000001_Segmentation.png").unlink()
    (tiny_isic / SPLITS["train"][0] / "ISIC_0000004.jpg").unlink()
    with pytest.raises(DataError) as err:
        folders.list_split(tiny_isic, "train")
    msg = str(err.value)
    assert "image(s) without a mask" in msg and "ISIC_0000001.jpg" in msg
    assert "mask(s) without an image" in msg and "ISIC_0000004_Segmentation.png" in msg


def test_empty_split(tiny_isic):
    for f in (tiny_isic / SPLITS["test"][0]).iterdir():
        f.unlink()
    with pytest.raises(DataError, match="test split is empty"):
        folders.list_split(tiny_isic, "test")


def test_duplicate_id(tiny_isic):
    folder = tiny_isic / SPLITS["train"][0]
    (folder / "ISIC_0000002.jpeg").write_bytes((folder / "ISIC_0000002.jpg").read_bytes())
    with pytest.raises(DataError, match="duplicate id ISIC_0000002"):
        folders.list_split(tiny_isic, "train")


def test_non_image_files_are_ignored_with_a_note(tiny_isic):
    (tiny_isic / SPLITS["train"][0] / ".DS_Store").write_bytes(b"\0")
    (tiny_isic / SPLITS["train"][0] / "LICENSE.txt").write_text("x")
    with pytest.warns(DataWarning, match="ignored 2 file"):
        assert len(folders.list_split(tiny_isic, "train")) == 6


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_unreadable_or_truncated_image_is_named(tiny_isic, damage):
    path = tiny_isic / SPLITS["train"][0] / "ISIC_0000003.jpg"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"this is not a jpeg")
    with pytest.raises(DataError, match="ISIC_0000003.jpg: unreadable or truncated"):
        cache.load_dataset(tiny_isic, "train", image_size=16, progress=False)


def test_mask_of_another_size(tiny_isic):
    path = tiny_isic / SPLITS["test"][1] / "ISIC_0000007_Segmentation.png"
    Image.new("L", (10, 10)).save(path)
    with pytest.raises(DataError, match=r"ISIC_0000007_Segmentation.png: mask is 10x10 but its image ISIC_0000007.jpg is 48x36"):
        cache.load_dataset(tiny_isic, "test", image_size=16, progress=False)


def test_non_binary_masks_binarised_at_128_with_one_warning(tiny_isic):
    for i, ident in enumerate(["ISIC_0000006", "ISIC_0000008"]):
        path = tiny_isic / SPLITS["test"][1] / f"{ident}_Segmentation.png"
        arr = np.zeros((36, 48), np.uint8)
        arr[:, :24] = 128  # exactly 128 is background for the ISIC scorer
        arr[:, 24:] = 129
        Image.fromarray(arr).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = cache.load_cached(tiny_isic, "test", image_size=48, progress=False)
    relevant = [w for w in caught if "not strictly 0/255" in str(w.message)]
    assert len(relevant) == 1 and "2 of 4 masks" in str(relevant[0].message)
    assert d["masks"][0, 0, :, :24].sum() == 0 and d["masks"][0, 0, :, 24:].all()


def test_grayscale_image_and_rgb_mask_are_converted_with_a_note(tiny_isic):
    img = tiny_isic / SPLITS["train"][0] / "ISIC_0000000.jpg"
    Image.open(img).convert("L").save(img)
    mask = tiny_isic / SPLITS["train"][1] / "ISIC_0000000_Segmentation.png"
    Image.open(mask).convert("RGB").save(mask)
    with pytest.warns(DataWarning, match="converted"):
        d = cache.load_cached(tiny_isic, "train", image_size=16, progress=False)
    assert d["images"].shape == (6, 3, 16, 16)


def test_cache_is_reused_and_rebuilt_when_files_change(tiny_isic, tmp_path):
    cache_dir = tmp_path / "cache"
    first = cache.load_cached(tiny_isic, "train", image_size=16, cache_dir=cache_dir, progress=False)
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].name.startswith("train-16px-")
    mtime = files[0].stat().st_mtime_ns
    again = cache.load_cached(tiny_isic, "train", image_size=16, cache_dir=cache_dir, progress=False)
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(first["images"], again["images"])
    # another image_size is another cache file
    cache.load_cached(tiny_isic, "train", image_size=20, cache_dir=cache_dir, progress=False)
    assert len(list(cache_dir.iterdir())) == 2
    # a changed image gives a new key, and the new content
    write_pair(tiny_isic, "train", 0, size=(40, 30), seed=99)
    changed = cache.load_cached(tiny_isic, "train", image_size=16, cache_dir=cache_dir, progress=False)
    assert not torch.equal(changed["images"][0], first["images"][0])
    assert len(list(cache_dir.iterdir())) == 3


def test_damaged_cache_is_rebuilt(tiny_isic, tmp_path):
    cache_dir = tmp_path / "cache"
    first = cache.load_cached(tiny_isic, "test", image_size=16, cache_dir=cache_dir, progress=False)
    (path,) = cache_dir.iterdir()
    path.write_bytes(b"garbage")
    with pytest.warns(DataWarning, match="damaged cache"):
        again = cache.load_cached(tiny_isic, "test", image_size=16, cache_dir=cache_dir, progress=False)
    assert torch.equal(first["masks"], again["masks"])
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temporary left


def test_check_command_summary(tiny_isic, capsys):
    assert data.main(["check", str(tiny_isic), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train     6 images" in out and "test      4 images" in out
    assert "width 40-60 px" in out and "lesion area" in out and "no problems found" in out


def test_check_command_lists_problems_and_fails(tiny_isic, capsys):
    (tiny_isic / SPLITS["train"][0] / "ISIC_0000002.jpg").write_bytes(b"junk")
    (tiny_isic / SPLITS["test"][1] / "ISIC_0000009_Segmentation.png").unlink()
    assert data.main(["check", str(tiny_isic), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "ISIC_0000002.jpg: unreadable" in out
    assert "ISIC_0000009.jpg" in out and "2 problem(s)" in out


def test_check_accepts_a_training_split_alone_but_not_half_a_test_split(tiny_isic, capsys):
    import shutil

    for folder in SPLITS["test"]:
        shutil.rmtree(tiny_isic / folder)
    assert data.main(["check", str(tiny_isic), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train     6 images" in out and "no test split: runs hold out a validation split" in out
    (tiny_isic / SPLITS["test"][0]).mkdir()  # images without their masks folder is a problem
    assert data.main(["check", str(tiny_isic), "--quiet"]) == 1


def test_check_command_on_missing_root(tmp_path, capsys):
    assert data.main(["check", str(tmp_path / "missing"), "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_rgba_image_is_converted_with_a_note(tiny_isic):
    img = tiny_isic / SPLITS["test"][0] / "ISIC_0000006.jpg"
    Image.open(img).convert("RGBA").save(img.with_suffix(".png"))
    img.unlink()
    with pytest.warns(DataWarning, match="ISIC_0000006.png: RGBA image converted to RGB"):
        d = cache.load_cached(tiny_isic, "test", image_size=16, progress=False)
    assert d["images"].shape == (4, 3, 16, 16)


def test_rgb_mask_with_jpeg_like_grey_levels_is_binarised_with_one_note(tiny_isic):
    path = tiny_isic / SPLITS["test"][1] / "ISIC_0000006_Segmentation.png"
    grey = np.zeros((36, 48), np.uint8)
    grey[:, :12], grey[:, 12:24], grey[:, 24:36], grey[:, 36:] = 3, 128, 129, 251  # JPEG-like ringing
    Image.fromarray(np.stack([grey] * 3, -1)).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = cache.load_cached(tiny_isic, "test", image_size=48, progress=False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # one note on the conversion, one counting the non-binary masks
    assert "ISIC_0000006_Segmentation.png: RGB mask converted to grayscale" in messages[0]
    assert "1 of 4 masks are not strictly 0/255; binarised at value > 128" in messages[1]
    assert d["masks"][0, 0, :, :24].sum() == 0 and d["masks"][0, 0, :, 24:].all()


def _truncate(root, tmp):
    path = root / SPLITS["train"][0] / "ISIC_0000003.jpg"
    path.write_bytes(path.read_bytes()[:300])
    return root, "train", "ISIC_0000003.jpg: unreadable or truncated image file"


def _garbage(root, tmp):
    (root / SPLITS["train"][0] / "ISIC_0000003.jpg").write_bytes(b"this is not a jpeg")
    return root, "train", "ISIC_0000003.jpg: unreadable or truncated image file"


def _bomb(root, tmp):
    (root / SPLITS["train"][0] / "ISIC_0000003.jpg").unlink()
    (root / SPLITS["train"][0] / "ISIC_0000003.png").write_bytes(png_claiming(20000, 13000))
    return root, "train", ("ISIC_0000003.png: image is 20000x13000 (260.0 million pixels), above the limit of 100 million "
                           "(a guard against decompression bombs); pass --max-pixels 260000000 to read it")


def _mask_bomb(root, tmp):
    (root / SPLITS["test"][1] / "ISIC_0000007_Segmentation.png").write_bytes(png_claiming(48 * 1000, 36 * 3000))
    return root, "test", "ISIC_0000007_Segmentation.png: image is 48000x108000 (5184.0 million pixels), above the limit"


def _truncated_mask(root, tmp):
    path = root / SPLITS["test"][1] / "ISIC_0000007_Segmentation.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 2, (36, 48), dtype=np.uint8) * 255).save(path)
    path.write_bytes(path.read_bytes()[:100])
    return root, "test", "ISIC_0000007_Segmentation.png: unreadable or truncated image file"


def _mask_size(root, tmp):
    Image.new("L", (10, 10)).save(root / SPLITS["test"][1] / "ISIC_0000007_Segmentation.png")
    return root, "test", "ISIC_0000007_Segmentation.png: mask is 10x10 but its image ISIC_0000007.jpg is 48x36"


def _image_without_mask(root, tmp):
    (root / SPLITS["train"][1] / "ISIC_0000001_Segmentation.png").unlink()
    return root, "train", f"1 image(s) without a mask in {root / SPLITS['train'][1]}: ISIC_0000001.jpg"


def _mask_without_image(root, tmp):
    (root / SPLITS["train"][0] / "ISIC_0000004.jpg").unlink()
    return root, "train", f"1 mask(s) without an image in {root / SPLITS['train'][0]}: ISIC_0000004_Segmentation.png"


def _duplicate(root, tmp):
    folder = root / SPLITS["train"][0]
    (folder / "ISIC_0000002.png").write_bytes((folder / "ISIC_0000002.jpg").read_bytes())
    return root, "train", "ISIC_0000002.png: duplicate id ISIC_0000002"


def _empty_split(root, tmp):
    for f in (root / SPLITS["test"][0]).iterdir():
        f.unlink()
    return root, "test", "Test_Data: no ISIC images (ISIC_XXXXXXX.jpg) in this folder: the test split is empty"


def _empty_folder(root, tmp):
    (tmp / "empty").mkdir()
    return tmp / "empty", "test", str(tmp / "empty")


def _missing_path(root, tmp):
    return tmp / "nowhere", "test", str(tmp / "nowhere")


FAULTS = {"truncated jpeg": _truncate, "not a jpeg": _garbage, "image above the pixel limit": _bomb,
          "mask above the pixel limit": _mask_bomb, "truncated png mask": _truncated_mask, "mask of another size": _mask_size,
          "image without mask": _image_without_mask, "mask without image": _mask_without_image,
          "duplicate id": _duplicate, "empty split": _empty_split, "empty folder": _empty_folder,
          "path that does not exist": _missing_path}


def _one_error_line(err, needle):
    print(err, end="")
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err


@pytest.mark.parametrize("fault", FAULTS)
def test_every_data_fault_is_one_named_error_line_in_each_command(tiny_isic, tmp_path, capsys, fault):
    from helpers import evaluate, train
    from helpers.tools import reproduce
    from helpers.model import build_model

    root, split, needle = FAULTS[fault](tiny_isic, tmp_path)
    assert data.main(["check", str(root), "--quiet"]) == 1  # python -m helpers.tools.data check
    captured = capsys.readouterr()
    assert needle in captured.out  # the full report lists every problem
    _one_error_line(captured.err, needle)

    args = ["--data", "isic2016" if root == tiny_isic else "auto", "--data-dir", str(root), "--image-size", "16",
            "--epochs", "1", "--device", "cpu", "--encoder-weights", "none", "--runs-dir", str(tmp_path / "runs"),
            "--figures-dir", str(tmp_path / "figures"), "--cache-dir", str(tmp_path / "cache"), "--name", "f"]
    assert reproduce.main(args) == 1  # python -m helpers.tools.reproduce: fails before any notebook runs
    _one_error_line(capsys.readouterr().err, needle)
    assert not (tmp_path / "runs").exists()

    train.save_run(tmp_path / "ckpt", build_model(False, encoder_weights=None), {"image_size": 16}, [])
    out = ["--checkpoint", str(tmp_path / "ckpt" / "checkpoint.pt"), "--data-dir", str(root), "--split", split,
           "--out", str(tmp_path / "eval"), "--quiet"]
    assert evaluate.main(out) == 1  # python -m helpers.evaluate
    _one_error_line(capsys.readouterr().err, needle)


def test_conversions_are_one_line_notes_before_the_notebooks_run(tiny_isic, tmp_path):
    from helpers.data import check_data
    from helpers.settings import RunConfig

    img = tiny_isic / SPLITS["train"][0] / "ISIC_0000000.jpg"
    Image.open(img).convert("L").save(img)
    (tiny_isic / SPLITS["train"][0] / "notes.txt").write_text("x")
    lines = []
    check_data(RunConfig(image_size=16, cache_dir=str(tmp_path / "cache"), progress=False), tiny_isic, lines.append)
    assert len(lines) == 2 and all(line.startswith("note: ") and "\n" not in line for line in lines)
    assert "ignored 1 file(s) that are not ISIC image files: notes.txt" in lines[0]
    assert "ISIC_0000000.jpg: L image converted to RGB" in lines[1]


def test_check_names_small_images_and_masks_with_no_lesion_or_no_background(tiny_isic, capsys):
    """They pass (ISIC 2016 has masks of each kind) but are named, with the working size --image-size."""
    image_dir, mask_dir = (tiny_isic / name for name in SPLITS["train"])
    Image.new("RGB", (1, 1), (90, 50, 30)).save(image_dir / "ISIC_0000001.jpg")
    Image.new("L", (1, 1), 255).save(mask_dir / "ISIC_0000001_Segmentation.png")  # 1 x 1 and all lesion
    Image.new("L", (48, 34), 0).save(mask_dir / "ISIC_0000002_Segmentation.png")  # no lesion
    assert data.main(["check", str(tiny_isic), "--quiet", "--image-size", "32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "warning" in line] == [
        "  warning: train: 1 image(s) smaller than 16 px on a side (under half the 32 px working size); they still "
        "train: ISIC_0000001",
        "  warning: train: 1 mask(s) with no lesion (all background); they still train: ISIC_0000002",
        "  warning: train: 1 mask(s) with no background (all lesion); they still train: ISIC_0000001",
        "no problems found (3 warning(s) above: those images train, look at them)"]
    assert data.main(["check", str(tiny_isic), "--quiet"]) == 0  # at 128 px every image here is small
    out = capsys.readouterr().out
    assert ("train: 6 image(s) smaller than 64 px on a side (under half the 128 px working size); they still train: "
            "ISIC_0000000, ISIC_0000001, ISIC_0000002, ISIC_0000003, ISIC_0000004 ...") in out
    assert "test: 4 image(s) smaller than 64 px" in out
