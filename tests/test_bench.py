import json
import math

import pytest

from helpers.tools import bench


@pytest.mark.slow
@pytest.mark.parametrize("augment", [[], ["--augment"]])
def test_bench_runs_end_to_end_and_writes_every_figure(tmp_path, capsys, augment):
    out = tmp_path / "out" / "bench.json"
    assert bench.main(["--images", "8", "--test-images", "2", "--source-size", "320x240", "--steps", "2",
                       "--warmup", "1", "--repeats", "2", "--batch-size", "4", "--image-size", "64", "--device", "cpu",
                       "--json", str(out), "--quiet", *augment]) == 0
    result = json.loads(out.read_text())
    assert [r["source_size"] for r in result["runs"]] == [[320, 240]]
    run = result["runs"][0]
    figures = [*run["images_per_s"].values(), run["pipeline_over_compute"], run["pipeline_over_naive"],
               run["cache_build_s"], run["cache_mb"], run["cache_mb_per_image"], run["peak_rss_mb"],
               run["eval_original_resolution_images_per_s"], result["peak_rss_mb"]]
    assert set(run["images_per_s"]) == {"compute", "pipeline", "naive"}
    for row, rounds in run["images_per_s_rounds"].items():  # each row reports the best of its 2 rounds
        assert len(rounds) == 2 and run["images_per_s"][row] == max(rounds)
    assert all(math.isfinite(v) and v > 0 for v in figures)
    assert run["cache_mb"] >= run["cache_raw_uint8_mb"] == 8 * 4 * 64 * 64 / 1e6  # uint8 images + masks
    assert result["settings"]["steps"] == 2 and result["settings"]["amp"] == "off"
    assert result["settings"]["repeats"] == 2 and result["settings"]["channels_last"] is True
    assert result["settings"]["augment"] is bool(augment)
    machine = result["machine"]
    assert machine["device"] == "cpu" and machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1
    printed = capsys.readouterr().out
    assert "pipeline/compute" in printed and printed.strip().splitlines()[-1].startswith("bench: ")
    assert ("pipeline augmented" in printed) is bool(augment)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # written atomically


def test_bench_rejects_bad_settings_in_one_line(tmp_path, capsys):
    assert bench.main(["--steps", "0", "--json", str(tmp_path / "b.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: bench: steps must be at least 1") and err.count("\n") == 1
    assert not (tmp_path / "b.json").exists()


def test_bench_on_an_isic_folder_uses_its_files(tiny_isic, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--data", str(tiny_isic), "--images", "4", "--steps", "1", "--warmup", "0", "--repeats", "1",
                       "--batch-size", "2", "--image-size", "32", "--device", "cpu", "--json", str(out),
                       "--quiet"]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["source_size"] is None and run["data_root"] == str(tiny_isic)
    assert run["train_images"] == 6 and run["eval_images"] == 4  # the folder's splits, not --test-images
    assert run["source_width_range"] == [40, 60] and run["source_height_range"] == [30, 40]
    assert run["cache_raw_uint8_mb"] == 6 * 4 * 32 * 32 / 1e6
    assert all(math.isfinite(v) and v > 0 for v in run["images_per_s"].values())
    printed = capsys.readouterr().out
    assert f"data {tiny_isic} (40-60 x 30-40 JPEG)" in printed and " at data; cpu" in printed
    assert not list(tiny_isic.rglob("*.pt"))  # the cache went to a temporary folder, not into the data


def test_bench_on_a_folder_without_data_fails_in_one_line(tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path / "nowhere"), "--json", str(tmp_path / "b.json"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nowhere") in err and err.count("\n") == 1
    assert not (tmp_path / "b.json").exists()


def test_bench_data_excludes_a_source_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--data", str(tmp_path), "--sweep"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
