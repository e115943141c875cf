"""helpers.evaluate: masks at the original size, scored exactly as the official ISIC scorer does."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.cache import load_dataset
from helpers.folders import SPLITS
from helpers.evaluate import evaluate_checkpoint, main, predict_logits, predict_original_size
from helpers.errors import ProjectError
from helpers.model import build_model
from helpers.splits import split_record, write_split
from helpers.train import fit, load_checkpoint, save_run

from isic_challenge_scoring.segmentation import SegmentationScore

IMAGE_SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in Series.rename")  # the scorer's pandas use
METRICS = ("accuracy", "sensitivity", "specificity", "jaccard", "threshold_jaccard", "dice")


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on a shared 2-core machine make tiny convolutions ~50x slower (OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def truth_dir(root):
    return root / SPLITS["test"][1]


def official_macro(root, out):
    return SegmentationScore.from_dir(truth_dir(root), out / "masks").macro_average


def check_masks(root, out):
    """One 8-bit 0/255 PNG per test image, named as the ISIC submission format, at the original size."""
    images = sorted((root / SPLITS["test"][0]).glob("*.jpg"))
    masks = sorted((out / "masks").iterdir())
    assert [m.name for m in masks] == [f"{p.stem}_segmentation.png" for p in images]
    arrays = []
    for image, mask in zip(images, masks):
        with Image.open(mask) as m, Image.open(image) as i:
            assert m.mode == "L" and m.size == i.size
            arrays.append(np.asarray(m))
        assert set(np.unique(arrays[-1])) <= {0, 255}
    return arrays


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_masks_and_metrics_match_the_official_scorer(runs, tmp_path):
    root, out = runs["root"], tmp_path / "eval"
    summary = evaluate_checkpoint(runs["mixed"], root, "test", out, batch_size=3, progress=False)
    masks = check_masks(root, out)
    assert any(0 < m.mean() < 255 for m in masks), "the mixed checkpoint should predict both classes"

    official = official_macro(root, out)
    assert json.loads((out / "summary.json").read_text()) == summary
    for name in METRICS:
        assert summary["macro"][name] == pytest.approx(float(official[name]), abs=1e-6), name

    rows = read_csv(out / "per_image.csv")
    assert list(rows[0]) == ["id", "height", "width", *METRICS] and len(rows) == 4
    for row in rows:
        j, d = float(row["jaccard"]), float(row["dice"])
        assert d == pytest.approx(2 * j / (1 + j), abs=1e-12)
        assert (int(row["height"]), int(row["width"])) == (36, 48)
    for name in METRICS:
        assert summary["macro"][name] == pytest.approx(np.mean([float(r[name]) for r in rows]), abs=1e-12)

    truths = [np.asarray(Image.open(p)) > 128 for p in sorted(truth_dir(root).iterdir())]
    tp = sum(((m > 128) & t).sum() for m, t in zip(masks, truths))
    wrong = sum(((m > 128) != t).sum() for m, t in zip(masks, truths))
    assert summary["micro"]["jaccard"] == pytest.approx(tp / (tp + wrong))
    assert summary["micro"]["dice"] == pytest.approx(2 * tp / (2 * tp + wrong))
    assert summary["n_images"] == 4 and summary["split"] == "test" and summary["resolution"] == "original"
    assert summary["data_source"] == "ISIC 2016 Part 1" and summary["tta"] is False
    assert summary["image_size"] == IMAGE_SIZE and summary["image_size_source"] == "checkpoint"
    assert summary["model"]["decoder"] == "report" and summary["settings"]["epochs"] == 1

    # predict_original_size gives the same mask for one image
    model, _ = load_checkpoint(runs["mixed"])
    test = load_dataset(root, "test", IMAGE_SIZE, progress=False)
    logits = predict_original_size(model, test.images[1], (36, 48))
    assert logits.shape == (1, 36, 48)
    assert np.array_equal((logits[0] >= 0).numpy(), masks[1] == 255)


def test_cli_on_a_trained_checkpoint(runs, tmp_path, capsys):
    root, out = runs["root"], tmp_path / "cli"
    args = ["--checkpoint", str(runs["fit"]), "--data-dir", str(root), "--out", str(out), "--quiet"]
    assert main([*args, "--image-size", str(IMAGE_SIZE), "--batch-size", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("evaluate: 4 test images, Jaccard ") and f"written to {out} in " in line
    assert "\n" not in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["image_size_source"] == "argument" and summary["tta"] is False
    check_masks(root, out)
    official = official_macro(root, out)
    for name in METRICS:
        assert summary["macro"][name] == pytest.approx(float(official[name]), abs=1e-6), name


def test_tta_is_recorded_and_named_alike(runs, tmp_path, capsys):
    root, out = runs["root"], tmp_path / "tta"
    assert main(["--checkpoint", str(runs["mixed"]), "--data-dir", str(root), "--out", str(out), "--tta",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "test-time augmentation is ON" in printed and "(flip TTA)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tta"] is True and summary["tta_mode"] == "flips"
    check_masks(root, out)
    official = official_macro(root, out)
    assert json.loads((out / "summary.json").read_text())["macro"]["dice"] == pytest.approx(official["dice"], abs=1e-6)


def test_tta_averages_the_three_flipped_passes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.Conv2d(1, 1, (1, 5), padding=(0, 2)))
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x = images.float() / 255
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1)).flip(-1) + model(x.flip(-2)).flip(-2)) / 3
        assert not torch.allclose(expected, model(x), atol=1e-4)  # the check is not vacuous
    assert torch.allclose(predict_logits(model, images, tta=True), expected, atol=1e-6)
    assert torch.equal(predict_logits(model, images), model(x).detach())
    pointwise = torch.nn.Conv2d(3, 1, 1)  # flip-equivariant: TTA changes nothing
    assert torch.allclose(predict_logits(pointwise, images, tta=True), predict_logits(pointwise, images), atol=1e-6)


def test_dihedral_tta_averages_the_eight_symmetries_of_the_square_each_undone(runs, tmp_path, capsys):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x = images.float() / 255
    red = torch.nn.Conv2d(3, 1, 1, bias=False)  # the red channel: undoing each view gives the image back
    with torch.no_grad():
        red.weight.copy_(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1))
    assert torch.allclose(predict_logits(red, images, tta="dihedral"), x[:, :1], atol=1e-6)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.Conv2d(1, 1, (1, 5), padding=(0, 2)))
    with torch.no_grad():
        views = [(k, f) for k in range(4) for f in (False, True)]
        expected = sum((lambda o: o.flip(-1) if f else o)(torch.rot90(model(torch.rot90(x.flip(-1) if f else x, k,
                                                                                        (-2, -1))), -k, (-2, -1)))
                       for k, f in views) / 8
        assert not torch.allclose(expected, predict_logits(model, images, tta=True), atol=1e-4)  # not the flips
    assert torch.allclose(predict_logits(model, images, tta="dihedral"), expected, atol=1e-6)
    with pytest.raises(ProjectError, match="tta must be"):
        predict_logits(model, images, tta="rotations")
    root, out = runs["root"], tmp_path / "d4"
    assert main(["--checkpoint", str(runs["mixed"]), "--data-dir", str(root), "--out", str(out), "--tta", "dihedral",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "its 8 rotations and flips" in printed and "(dihedral TTA)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tta"] is True and summary["tta_mode"] == "dihedral"
    assert summary["macro"]["dice"] == pytest.approx(official_macro(root, out)["dice"], abs=1e-6)


def test_an_ensemble_is_the_mean_probability_of_its_models(runs, tmp_path, capsys):
    """Several checkpoints score as one model whose probability is their mean; one is the plain model."""
    from helpers.evaluate import ensemble_masks

    models = [load_checkpoint(runs[k])[0] for k in ("fit", "mixed")]
    images = torch.randint(0, 256, (2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    sizes = [(30, 40), (36, 48)]
    masks = ensemble_masks(models, images, sizes)
    for i, size in enumerate(sizes):
        probs = [torch.sigmoid(predict_original_size(m, images[i], size)) for m in models]
        assert torch.equal(masks[i], ((probs[0] + probs[1]) / 2 >= 0.5)[0]) and masks[i].shape == size
        assert torch.equal(ensemble_masks(models[:1], images, sizes)[i], (probs[0] >= 0.5)[0])
    root, out = runs["root"], tmp_path / "ensemble"
    assert main(["--checkpoint", str(runs["fit"]), str(runs["mixed"]), "--data-dir", str(root), "--out", str(out),
                 "--image-size", str(IMAGE_SIZE), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ensemble"] == 2 and summary["checkpoint"] == [str(runs["fit"]), str(runs["mixed"])]
    check_masks(root, out)
    assert summary["macro"]["jaccard"] == pytest.approx(float(official_macro(root, out)["jaccard"]), abs=1e-6)


def test_validation_of_a_split_file_scores_only_its_ids(runs, tmp_path, capsys):
    root, held = runs["root"], ["ISIC_0000001", "ISIC_0000003"]
    train_ids = sorted(p.stem for p in (root / SPLITS["train"][0]).glob("*.jpg"))
    assert set(held) < set(train_ids)
    split = write_split(tmp_path / "run", split_record([i for i in train_ids if i not in held], held, 0.2, 0))
    out = tmp_path / "val"
    assert main(["--checkpoint", str(runs["fit"]), str(runs["mixed"]), "--data-dir", str(root), "--out", str(out),
                 "--validation-of", str(split), "--image-size", str(IMAGE_SIZE), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("evaluate: 2 chosen train images, Jaccard ")
    assert sorted(m.name for m in (out / "masks").iterdir()) == [f"{i}_segmentation.png" for i in held]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "train" and summary["n_images"] == 2 and summary["ensemble"] == 2
    assert [r["id"] for r in read_csv(out / "per_image.csv")] == held
    bad = [(tmp_path / "none.json", "split file not found"), (tmp_path / "junk.json", "unreadable split file"),
           (tmp_path / "other.json", "not a split file")]
    (tmp_path / "junk.json").write_text("{")
    (tmp_path / "other.json").write_text(json.dumps({"validation_ids": []}))
    for path, why in bad:
        assert main(["--checkpoint", str(runs["fit"]), "--data-dir", str(root), "--out", str(tmp_path / "x"),
                     "--validation-of", str(path)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {path}: {why}") and "\n" not in err
    assert main(["--checkpoint", str(runs["fit"]), "--data-dir", str(root), "--split", "test", "--out",
                 str(tmp_path / "x"), "--validation-of", str(split)]) == 1
    assert "come from the train split, not --split test" in capsys.readouterr().err
    assert main(["--checkpoint", str(runs["fit"]), "--images", str(root / SPLITS["test"][0]), "--out",
                 str(tmp_path / "x"), "--validation-of", str(split)]) == 1
    assert "--validation-of goes with --data-dir" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_images_only_writes_masks_without_metrics(runs, tmp_path, capsys):
    root, out = runs["root"], tmp_path / "images-only"
    evaluate_checkpoint(runs["fit"], root, "test", out, progress=False)  # an earlier run with ground truth
    assert (out / "per_image.csv").is_file()
    shutil.rmtree(truth_dir(root))
    (root / "synthetic.json").write_text("{}")
    assert main(["--checkpoint", str(runs["fit"]), "--data-dir", str(root), "--out", str(out), "--quiet"]) == 0
    assert "4 test images, no ground truth, masks only" in capsys.readouterr().out
    check_masks(root, out)
    assert not (out / "per_image.csv").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ground_truth"] is False and summary["macro"] is None and summary["micro"] is None
    assert summary["image_size"] == 32 and summary["image_size_source"] == "checkpoint"
    assert summary["data_source"] == "SYNTHETIC demo set (not ISIC data)"


def test_errors_are_one_line(runs, tmp_path, capsys):
    root, out = runs["root"], tmp_path / "err"
    missing = tmp_path / "no" / "checkpoint.pt"
    assert main(["--checkpoint", str(missing), "--data-dir", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {missing}: checkpoint file not found"

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(broken), "--data-dir", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {broken}: cannot load checkpoint") and "\n" not in err

    (out / "masks").mkdir(parents=True)
    (out / "masks" / "ISIC_0000001_segmentation.png").write_bytes(b"")  # from another split
    assert main(["--checkpoint", str(runs["mixed"]), "--data-dir", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "ISIC_0000001_segmentation.png" in err and "\n" not in err
    assert main(["--checkpoint", str(runs["mixed"]), "--data-dir", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere'}: data folder does not exist"
