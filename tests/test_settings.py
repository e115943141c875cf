"""A run's settings: the file the headless run hands every notebook, read back with a notebook's own values."""

import json

import pytest

from helpers.settings import RunConfig, SettingsError


def test_a_saved_configuration_comes_back_whole_and_the_notebooks_values_win(tmp_path):
    cfg = RunConfig(data="synthetic", epochs=3, tta="dihedral", external="PH2=/x", max_pixels=5_000, progress=False,
                    m3_recipe="strong", seeds=2, m3_ensemble=True)
    path = cfg.write(tmp_path / "settings.json")
    assert RunConfig.load(path) == cfg
    assert RunConfig.load(str(path), epochs=7, seeds=3) == RunConfig(**{**cfg.__dict__, "epochs": 7, "seeds": 3})
    assert RunConfig.load(None, lr=0.01) == RunConfig(lr=0.01)  # no file: the defaults
    assert RunConfig.load(None).seed_list == [0] and RunConfig(seed=4, seeds=3).seed_list == [4, 5, 6]
    (tmp_path / "mine.json").write_text(json.dumps({"batch_size": 8}))  # a file of one's own: some settings
    assert RunConfig.load(tmp_path / "mine.json").batch_size == 8


def test_a_settings_file_that_cannot_be_used_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"missing.json: cannot read the run settings \(FileNotFoundError"):
        RunConfig.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SettingsError, match=r"bad.json: cannot read the run settings \(JSONDecodeError"):
        RunConfig.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SettingsError, match="list.json: the run settings must be a JSON object"):
        RunConfig.load(tmp_path / "list.json")
    (tmp_path / "old.json").write_text(json.dumps({"epochs": 2, "m3_loss": "bce"}))
    with pytest.raises(SettingsError, match="old.json: unknown setting.s. m3_loss; the settings are"):
        RunConfig.load(tmp_path / "old.json")
    with pytest.raises(SettingsError, match="^unknown setting.s. epoch;"):
        RunConfig.load(None, epoch=3)
    (tmp_path / "value.json").write_text(json.dumps({"epochs": 0}))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        RunConfig.load(tmp_path / "value.json")
