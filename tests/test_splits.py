"""The seeded validation split held out of a training split, and its use by the experiment."""

from __future__ import annotations

import json

import pytest

from helpers import data, settings, training
from helpers.errors import DataError, ProjectError
from helpers.settings import RunConfig
from helpers.splits import holdout, split_record, write_split

IDS = [f"ISIC_{i:07d}" for i in range(50)]


def test_holdout_is_a_disjoint_repeatable_partition():
    train, val = holdout(IDS, 0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert not set(train) & set(val) and sorted(train + val) == IDS
    assert (train, val) == holdout(list(reversed(IDS)), 0.2, seed=0)  # the file order does not matter
    assert holdout(IDS, 0.2, seed=1)[1] != val  # another seed, other ids
    assert train == sorted(train) and val == sorted(val)


def test_holdout_keeps_an_id_where_it_was_when_others_are_added():
    """Membership is decided per id (its hash rank), so a larger set reorders nothing it already had."""
    small_val = set(holdout(IDS[:40], 0.25, seed=3)[1])
    big_val = set(holdout(IDS, 0.25, seed=3)[1])
    assert len(small_val - big_val) <= 3


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_holdout_refuses_a_bad_fraction(fraction):
    with pytest.raises(ProjectError, match="between 0 and 1"):
        holdout(IDS, fraction)


def test_holdout_keeps_one_image_on_each_side():
    assert holdout(IDS[:2], 0.01) == ([IDS[1]], [IDS[0]]) or holdout(IDS[:2], 0.01) == ([IDS[0]], [IDS[1]])
    assert len(holdout(IDS[:2], 0.99)[0]) == 1
    with pytest.raises(DataError, match="at least 2"):
        holdout(IDS[:1], 0.5)
    with pytest.raises(DataError, match="duplicate"):
        holdout([IDS[0], IDS[0], IDS[1]], 0.5)


def test_a_run_folder_keeps_one_split(tmp_path):
    record = split_record(*holdout(IDS, 0.2, 0), 0.2, 0)
    write_split(tmp_path, record)
    write_split(tmp_path, record)  # the same split again is fine
    with pytest.raises(ProjectError, match="another validation split"):
        write_split(tmp_path, split_record(*holdout(IDS, 0.2, 1), 0.2, 1))
    assert json.loads((tmp_path / "split.json").read_text())["validation_ids"] == record["validation_ids"]


def cfg(tmp_path, root, **kw):
    return RunConfig(data="auto", data_dir=str(root), image_size=32, run_dir=str(tmp_path / "run"),
                     cache_dir=str(tmp_path / "cache"), progress=False, **kw)


def test_a_folder_without_test_split_is_scored_on_a_held_out_validation_split(tmp_path, train_only):
    d = data.prepare_data(cfg(tmp_path, train_only), log=lambda line: None)
    assert d.test is None and d.scored is d.val and d.scored_name == "validation"
    assert len(d.val) == 2 and len(d.train) == 8 and not set(d.val.ids) & set(d.train.ids)
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert saved["validation_ids"] == d.val.ids and saved["train_ids"] == d.train.ids and saved["seed"] == 0
    assert "20% validation split (split seed 0, 2 images)" in d.label and "(clinic)" in d.label
    again = data.prepare_data(cfg(tmp_path, train_only), log=lambda line: None)
    assert again.val.ids == d.val.ids and (again.val.images == d.val.images).all()
    summary = data.dataset_summary(d)
    assert summary["validation"]["images"] == 2 and "test" not in summary


def test_the_reports_protocol_stays_the_default_with_a_test_split(tmp_path, tiny_isic):
    d = data.prepare_data(cfg(tmp_path, tiny_isic), log=lambda line: None)
    assert d.val is None and d.scored is d.test and d.scored_name == "test" and len(d.train) == 6
    assert not (tmp_path / "run" / "split.json").exists()
    held = data.prepare_data(cfg(tmp_path, tiny_isic, val_fraction=0.5, split_seed=2), log=lambda line: None)
    assert held.scored is held.test and len(held.val) == 3 and len(held.train) == 3


def test_no_split_to_score_is_refused(tmp_path, train_only):
    with pytest.raises(DataError, match="nothing to score"):
        data.prepare_data(cfg(tmp_path, train_only, val_fraction=0.0), log=lambda line: None)


def test_best_epoch_selection_needs_a_validation_split(tmp_path, tiny_isic):
    c = cfg(tmp_path, tiny_isic, encoder_weights=None, epochs=1)
    d = data.prepare_data(c, log=lambda line: None)
    model = training.new_model(c, freeze_encoder=False, decoder="unet")
    with pytest.raises(DataError, match="needs a validation split"):
        training.train_and_evaluate(c, d, model, "model3_unet", recipe={**settings.model3_recipe(c), "select": "best"})
