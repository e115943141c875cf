"""Tests of helpers.synthetic: layout, masks, realism statistics, determinism, writing, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from helpers import synthetic
from helpers.errors import DataError
from helpers.folders import list_split
from helpers.synthetic import SPLITS, main, render_case, write_synthetic_dataset

N_TRAIN, N_TEST = 12, 6
FOLDERS = [name for pair in SPLITS.values() for name in pair]


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    summary = write_synthetic_dataset(root, n_train=N_TRAIN, n_test=N_TEST, seed=3, progress=False)
    return root, summary


@pytest.fixture(scope="module")
def cases():
    """40 rendered cases with random sizes: (image, mask as bool array)."""
    return [(img, np.asarray(mask) > 0) for img, mask in
            (render_case(np.random.default_rng([11, 0, i])) for i in range(40))]


def test_splits_constant():
    assert SPLITS == {
        "train": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
        "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
    }


def test_layout_and_naming(dataset):
    root, summary = dataset
    assert sorted(p.name for p in root.iterdir()) == sorted(FOLDERS + ["synthetic.json"])  # no temp left
    expected = {"train": range(9_000_000, 9_000_000 + N_TRAIN),
                "test": range(9_000_000 + N_TRAIN, 9_000_000 + N_TRAIN + N_TEST)}
    for split, (images, masks) in SPLITS.items():
        image_names = sorted(p.name for p in (root / images).iterdir())
        mask_names = sorted(p.name for p in (root / masks).iterdir())
        assert all(re.fullmatch(r"ISIC_\d{7}\.jpg", n) for n in image_names)
        assert all(re.fullmatch(r"ISIC_\d{7}_Segmentation\.png", n) for n in mask_names)
        assert image_names == [f"ISIC_{i:07d}.jpg" for i in expected[split]]
        assert mask_names == [f"ISIC_{i:07d}_Segmentation.png" for i in expected[split]]
    marker = json.loads((root / "synthetic.json").read_text())
    assert marker["n_train"] == N_TRAIN and marker["n_test"] == N_TEST and marker["seed"] == 3
    assert marker["source_size"] is None and marker["format_version"] == synthetic.FORMAT_VERSION
    assert summary["written"] is True and summary["n_train"] == N_TRAIN and summary["n_test"] == N_TEST


def test_no_synthetic_id_is_a_real_isic_id_and_the_loader_takes_them_all(dataset):
    root, _ = dataset
    ids = {split: [s.id for s in list_split(root, split)] for split in SPLITS}
    assert len(ids["train"]) == N_TRAIN and len(ids["test"]) == N_TEST
    assert not set(ids["train"]) & set(ids["test"])
    assert all(int(i.removeprefix("ISIC_")) >= 9_000_000 for split in ids.values() for i in split)


def test_too_many_cases_for_seven_digit_ids(tmp_path):
    with pytest.raises(DataError, match="at most 1000000 cases"):
        write_synthetic_dataset(tmp_path, n_train=999_999, n_test=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_images_jpeg_rgb_and_masks_binary_same_size(dataset):
    root, _ = dataset
    for images, masks in SPLITS.values():
        for image_path in sorted((root / images).iterdir()):
            mask_path = root / masks / f"{image_path.stem}_Segmentation.png"
            with Image.open(image_path) as image, Image.open(mask_path) as mask:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert mask.format == "PNG" and mask.mode == "L"
                assert mask.size == image.size
                values = set(np.unique(np.asarray(mask)).tolist())
                assert values == {0, 255}


def test_deterministic_same_seed_identical_other_seed_differs(dataset, tmp_path):
    root, _ = dataset
    write_synthetic_dataset(tmp_path / "same", n_train=N_TRAIN, n_test=N_TEST, seed=3, progress=False)
    write_synthetic_dataset(tmp_path / "other", n_train=N_TRAIN, n_test=N_TEST, seed=4, progress=False)
    first, same, other = _files(root), _files(tmp_path / "same"), _files(tmp_path / "other")
    images = [k for k in first if k.endswith(".jpg")]
    assert {k: v for k, v in first.items() if k != "synthetic.json"} == \
        {k: v for k, v in same.items() if k != "synthetic.json"}
    assert all(first[k] != other[k] for k in images)
    assert sorted(first) == sorted(other)


def test_render_case_is_a_function_of_the_generator():
    a = render_case(np.random.default_rng([5, 1, 7]))
    b = render_case(np.random.default_rng([5, 1, 7]))
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()


def test_varied_sizes_and_aspects(cases):
    sizes = [img.size for img, _ in cases]
    widths = {w for w, _ in sizes}
    aspects = [max(w, h) / min(w, h) for w, h in sizes]
    assert len(set(sizes)) > 30 and max(widths) - min(widths) > 200
    assert all(300 <= max(w, h) <= 800 for w, h in sizes)
    assert min(aspects) < 1.15 and max(aspects) > 1.35 and max(aspects) <= 1.51
    landscape = sum(w > h for w, h in sizes)
    assert 0.5 * len(sizes) < landscape < len(sizes)  # mostly landscape, some portrait


def test_lesion_area_spans_a_wide_range_and_some_touch_the_border(cases):
    fractions = np.array([mask.mean() for _, mask in cases])
    assert (fractions > 0.005).all()  # every image has a lesion
    assert (fractions < 0.10).any() and (fractions > 0.40).any()
    touching = [m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() for _, m in cases]
    assert 0 < sum(touching) < len(cases)


def test_lesion_darker_than_skin(cases):
    darker = []
    for img, mask in cases:
        lum = np.asarray(img.convert("L"), dtype=np.float64)
        darker.append(lum[mask].mean() < lum[~mask].mean() - 10)
    assert np.mean(darker) >= 0.9


def test_hairs_are_drawn_but_never_in_the_mask(monkeypatch):
    with_hair = [render_case(np.random.default_rng([11, 0, i])) for i in range(12)]
    monkeypatch.setattr(synthetic, "_hairs", lambda rng, image, scale: None)
    without = [render_case(np.random.default_rng([11, 0, i])) for i in range(12)]
    assert all(a[1].tobytes() == b[1].tobytes() for a, b in zip(with_hair, without))
    assert any(a[0].tobytes() != b[0].tobytes() for a, b in zip(with_hair, without))  # some have hair


def test_source_size_exact(tmp_path):
    summary = write_synthetic_dataset(tmp_path, n_train=2, n_test=1, seed=0, source_size=(300, 200),
                                      progress=False)
    assert summary["source_size"] == [300, 200]
    for folder in FOLDERS:
        for p in (tmp_path / folder).iterdir():
            with Image.open(p) as image:
                assert image.size == (300, 200)


def test_large_size_is_upsampled_and_mask_stays_binary():
    image, mask = render_case(np.random.default_rng(1), (1500, 1000))
    assert image.size == mask.size == (1500, 1000) and image.mode == "RGB" and mask.mode == "L"
    assert set(np.unique(np.asarray(mask)).tolist()) == {0, 255}


def _pixel_texture(image):
    """Mean absolute difference of horizontally adjacent green values: the pixel-level detail."""
    return float(np.abs(np.diff(np.asarray(image, dtype=np.float32)[..., 1], axis=1)).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_large_source_keeps_the_pixel_texture_of_a_working_size_one(monkeypatch, seed):
    working = _pixel_texture(render_case(np.random.default_rng(seed), (1000, 750))[0])  # rendered as is
    large = _pixel_texture(render_case(np.random.default_rng(seed), (2000, 1500))[0])  # upsampled 2x
    assert large == pytest.approx(working, rel=0.15)
    monkeypatch.setattr(synthetic, "_grain", lambda rng, image: image)  # upsampling alone halves it
    assert _pixel_texture(render_case(np.random.default_rng(seed), (2000, 1500))[0]) < 0.7 * working


@settings(max_examples=15, deadline=None)
@given(w=st.integers(8, 160), h=st.integers(8, 160), seed=st.integers(0, 2**32 - 1))
def test_render_case_any_size(w, h, seed):
    image, mask = render_case(np.random.default_rng(seed), (w, h))
    assert image.size == mask.size == (w, h)
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


def test_second_call_is_a_no_op(dataset, capsys):
    root, _ = dataset
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    summary = write_synthetic_dataset(root, n_train=N_TRAIN, n_test=N_TEST, seed=3, progress=False)
    assert summary["written"] is False and summary["n_train"] == N_TRAIN
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert "already" in capsys.readouterr().out


def test_a_set_of_an_older_format_is_replaced_with_a_message(tmp_path, capsys):
    write_synthetic_dataset(tmp_path, n_train=2, n_test=1, seed=0, progress=False)
    marker = tmp_path / synthetic.MARKER
    stored = json.loads(marker.read_text())
    marker.write_text(json.dumps({**stored, "format_version": synthetic.FORMAT_VERSION - 1}))
    for folder in FOLDERS:  # format 2 named its cases from ISIC_0000000, real ISIC ids
        for path in (tmp_path / folder).iterdir():
            path.rename(path.with_name(path.name.replace("ISIC_9", "ISIC_0")))
    (tmp_path / SPLITS["train"][0] / "ISIC_0000000.jpg").write_bytes(b"stale")
    capsys.readouterr()
    summary = write_synthetic_dataset(tmp_path, n_train=2, n_test=1, seed=0, progress=False)
    assert summary["written"] is True and f"writing format {synthetic.FORMAT_VERSION}" in capsys.readouterr().out
    assert json.loads(marker.read_text())["format_version"] == synthetic.FORMAT_VERSION
    assert sorted(p.name for p in (tmp_path / SPLITS["train"][0]).iterdir()) == ["ISIC_9000000.jpg",
                                                                                  "ISIC_9000001.jpg"]
    assert Image.open(tmp_path / SPLITS["train"][0] / "ISIC_9000000.jpg").size  # rewritten, readable
    marker.write_text(json.dumps({**stored, "format_version": synthetic.FORMAT_VERSION - 1, "seed": 5}))
    with pytest.raises(DataError, match="already exists; pass --overwrite"):  # other parameters: not ours to replace
        write_synthetic_dataset(tmp_path, n_train=2, n_test=1, seed=0, progress=False)


def test_existing_folders_need_overwrite(tmp_path):
    (tmp_path / SPLITS["test"][1]).mkdir()
    with pytest.raises(DataError, match=r"ISBI2016_ISIC_Part1_Test_GroundTruth.*--overwrite"):
        write_synthetic_dataset(tmp_path, n_train=2, n_test=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SPLITS["test"][1]]  # nothing else written


def test_other_parameters_need_overwrite_and_overwrite_replaces(tmp_path):
    write_synthetic_dataset(tmp_path, n_train=3, n_test=2, seed=0, progress=False)
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="--overwrite"):
        write_synthetic_dataset(tmp_path, n_train=2, n_test=1, seed=1, progress=False)
    summary = write_synthetic_dataset(tmp_path, n_train=2, n_test=1, seed=1, overwrite=True, progress=False)
    assert summary["written"] is True
    assert sorted(p.name for p in (tmp_path / SPLITS["train"][0]).iterdir()) == ["ISIC_9000000.jpg",
                                                                                  "ISIC_9000001.jpg"]
    assert sorted(p.name for p in (tmp_path / SPLITS["test"][0]).iterdir()) == ["ISIC_9000002.jpg"]
    assert json.loads((tmp_path / "synthetic.json").read_text())["seed"] == 1
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FOLDERS + ["keep.txt", "synthetic.json"])


@pytest.mark.parametrize("kwargs", [{"n_train": 0}, {"n_test": 0}, {"n_train": -1}, {"n_test": 1.5},
                                    {"n_train": True}, {"seed": -1}, {"source_size": (0, 10)}])
def test_invalid_arguments(tmp_path, kwargs):
    args = {"n_train": 2, "n_test": 1, **kwargs}
    with pytest.raises(DataError):
        write_synthetic_dataset(tmp_path / "root", progress=False, **args)
    assert not (tmp_path / "root").exists()


def test_failure_removes_temporary_folder(tmp_path, monkeypatch):
    calls = []

    def broken(rng, size=None):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("boom")
        return render_case(rng, (32, 24))

    monkeypatch.setattr(synthetic, "render_case", broken)
    with pytest.raises(RuntimeError, match="boom"):
        write_synthetic_dataset(tmp_path, n_train=4, n_test=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes(tmp_path, capsys):
    root = tmp_path / "demo"
    assert main([str(root), "--n-train", "3", "--n-test", "2", "--seed", "7", "--source-size", "64x48",
                 "--no-progress"]) == 0
    assert len(list((root / SPLITS["train"][0]).glob("*.jpg"))) == 3
    assert len(list((root / SPLITS["test"][1]).glob("*_Segmentation.png"))) == 2
    with Image.open(root / SPLITS["test"][0] / "ISIC_9000003.jpg") as image:
        assert image.size == (64, 48)
    out = capsys.readouterr().out
    assert "wrote 3 train + 2 test images" in out


@pytest.mark.parametrize("extra", [["--n-train", "0"], []])
def test_cli_error_is_one_line(tmp_path, capsys, extra):
    (tmp_path / SPLITS["train"][0]).mkdir()
    assert main([str(tmp_path), "--n-test", "1", "--no-progress", *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_bad_size_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--source-size", "big"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_module_entry_point(tmp_path):
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "helpers.synthetic", str(tmp_path / "d"), "--n-train", "1",
                             "--n-test", "1", "--source-size", "40x30"], cwd=root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d" / "synthetic.json").is_file()
