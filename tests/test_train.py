import json
import math

import pytest
import torch

from helpers import cache, train
from helpers.errors import RunStateError, TrainingDiverged
from helpers.model import build_model


@pytest.fixture
def splits(tiny_isic):
    return (cache.load_dataset(tiny_isic, "train", 32, progress=False),
            cache.load_dataset(tiny_isic, "test", 32, progress=False))


def _fit(splits, tmp_path, freeze=False, seed=3, epochs=2):
    torch.manual_seed(seed)
    model = build_model(freeze, encoder_weights=None)
    history = train.fit(model, *splits, epochs=epochs, batch_size=4, seed=seed, device="cpu",
                        out_dir=tmp_path, progress=False, log=None)
    return model, history


def test_history_records_losses_and_metrics_per_epoch(splits, tmp_path):
    _, history = _fit(splits, tmp_path)
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert set(row) == {"epoch", "train_loss", "test_loss", "test_iou", "test_dice", "seconds"}
        assert all(math.isfinite(row[k]) for k in row)
        assert 0 <= row["test_iou"] <= row["test_dice"] <= 1  # J <= D always
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["settings"]["optimizer"] == "NAdam" and saved["settings"]["lr"] == 0.001
    assert [r["train_loss"] for r in saved["history"]] == [r["train_loss"] for r in history]


def test_seeded_cpu_runs_are_reproducible(splits, tmp_path):
    _, h1 = _fit(splits, tmp_path / "a")
    _, h2 = _fit(splits, tmp_path / "b")
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert strip(h1) == strip(h2)
    _, h3 = _fit(splits, tmp_path / "c", seed=4)
    assert strip(h3) != strip(h1)


def test_training_lowers_the_loss(splits, tmp_path):
    _, history = _fit(splits, tmp_path, epochs=4)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_frozen_encoder_is_unchanged_by_fit(splits, tmp_path):
    torch.manual_seed(0)
    model = build_model(True, encoder_weights=None)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    train.fit(model, *splits, epochs=1, batch_size=4, seed=0, device="cpu", progress=False, log=None)
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())


def test_checkpoint_roundtrip_gives_the_same_predictions(splits, tmp_path):
    model, history = _fit(splits, tmp_path, epochs=1)
    loaded, ckpt = train.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["settings"]["seed"] == 3 and ckpt["history"] == history
    assert loaded.config == model.config
    x = torch.stack([splits[1][i]["image"] for i in range(len(splits[1]))])
    x = x.contiguous(memory_format=torch.channels_last)  # fit trained in NHWC ("auto" on CPU); same kernels
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded.to(memory_format=torch.channels_last)(x))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_checkpoint_read_again_unchanged_is_not_unpickled_again_and_a_rewritten_one_is(tmp_path, monkeypatch):
    from helpers import checkpoint

    path, reads, real_load = tmp_path / "checkpoint.pt", [], torch.load
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    torch.manual_seed(0)
    first = build_model(False, encoder_weights=None)
    train.save_run(tmp_path, first, {"seed": 0}, [])
    a, ckpt_a = train.load_checkpoint(path)
    ckpt_a["settings"] = "changed by its caller"
    b, ckpt_b = train.load_checkpoint(path)
    assert len(reads) == 1 and ckpt_b["settings"] == {"seed": 0}
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    torch.manual_seed(1)
    train.save_run(tmp_path, build_model(False, encoder_weights=None), {"seed": 1}, [])  # the same path, rewritten
    c, ckpt_c = train.load_checkpoint(path)
    assert len(reads) == 2 and ckpt_c["settings"] == {"seed": 1}
    assert not torch.equal(c.state_dict()["head.weight"], a.state_dict()["head.weight"])


def test_evaluate_counts_cover_every_pixel(splits):
    model = build_model(False, encoder_weights=None)
    loader = train.make_loader(splits[1], 3, False)
    ev = train.evaluate(model, loader, torch.device("cpu"), keep_probs=True)
    assert ev["counts"].shape == (4, 4) and (ev["counts"].sum(1) == 32 * 32).all()
    assert ev["ids"] == splits[1].ids and ev["probs"].shape == (4, 1, 32, 32)


def test_device_resolution():
    assert train.resolve_device("cpu").type == "cpu"
    assert train.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            train.resolve_device("cuda")


def _batches(loader, epochs=2):
    return [batch for _ in range(epochs) for batch in loader]


@pytest.mark.parametrize("shuffle", [True, False])
def test_fast_batched_loader_gives_the_same_batches_as_the_per_item_loader(splits, shuffle):
    ds = splits[0]  # 6 images, batch 4: a full and a partial batch per epoch
    fast = train.make_loader(ds, 4, shuffle, torch.Generator().manual_seed(5))
    plain = train.make_loader(ds, 4, shuffle, torch.Generator().manual_seed(5), batched=False)
    assert fast.batch_size is None and plain.batch_size == 4 and len(fast) == len(plain) == 2
    a, b = _batches(fast), _batches(plain)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and x["id"] == y["id"]
        for key in ("image", "mask", "size"):
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key])
    if shuffle:  # two epochs, two different orders, the same for the same seed
        assert a[0]["id"] + a[1]["id"] != a[2]["id"] + a[3]["id"]


def test_dataset_batch_indexing_equals_its_items(splits):
    ds = splits[0]
    batch = ds[[4, 1]]
    assert batch["id"] == [ds[4]["id"], ds[1]["id"]]
    assert torch.equal(batch["image"], torch.stack([ds[4]["image"], ds[1]["image"]]))
    assert torch.equal(batch["mask"][1], ds[1]["mask"]) and torch.equal(batch["size"][0], ds[4]["size"])


def test_training_results_do_not_change_with_the_cache(tiny_isic, tmp_path):
    """The cached tensors (fast batched loader) and the files decoded per item train identically."""
    cached = (cache.load_dataset(tiny_isic, "train", 32, tmp_path / "cache", progress=False),
              cache.load_dataset(tiny_isic, "test", 32, tmp_path / "cache", progress=False))
    files = (cache.FileSegmentation(tiny_isic, "train", 32), cache.FileSegmentation(tiny_isic, "test", 32))
    h_cached, h_files = _fit(cached, tmp_path / "a", epochs=1)[1], _fit(files, tmp_path / "b", epochs=1)[1]
    for key in ("train_loss", "test_loss", "test_iou", "test_dice"):
        assert h_cached[0][key] == pytest.approx(h_files[0][key], rel=1e-6, abs=1e-9)


def test_amp_and_channels_last_resolve_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert train.resolve_amp("auto", cpu) is None and train.resolve_channels_last("auto", cpu) is True
    assert train.resolve_channels_last("auto", torch.device("meta")) is False
    assert train.resolve_channels_last(False, cpu) is False
    assert train.resolve_amp(True, cpu) is torch.bfloat16 and train.resolve_amp("fp16", cpu) is torch.float16
    assert train.resolve_amp(False, cuda) is None and train.resolve_channels_last("auto", cuda) is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert train.resolve_amp("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert train.resolve_amp("auto", cuda) is torch.float16
    with pytest.raises(ValueError, match="amp must be"):
        train.resolve_amp("yes", cpu)
    with pytest.raises(ValueError, match="channels_last must be"):
        train.resolve_channels_last("on", cpu)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train_on_cpu(splits, amp):
    """The GPU code paths (autocast, GradScaler for fp16, NHWC) run on CPU: right shapes, finite losses."""
    torch.manual_seed(0)
    model = build_model(False, encoder_weights=None)
    optimizer = torch.optim.NAdam(model.parameters(), lr=1e-3)
    dev = torch.device("cpu")
    loader = train.make_loader(splits[0], 4, True, torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    # a small initial loss scale, so that float16 gradients do not overflow and every step is taken
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0) if amp == "fp16" else None
    loss = train.train_one_epoch(model, loader, optimizer, dev, False, amp=amp, channels_last=True, scaler=scaler)
    assert math.isfinite(loss) and loss > 0
    assert model.head.weight.is_contiguous(memory_format=torch.channels_last)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the steps were taken
    ev = train.evaluate(model, train.make_loader(splits[1], 3, False), dev, keep_probs=True, amp=amp,
                        channels_last=True)
    assert math.isfinite(ev["loss"]) and ev["counts"].shape == (4, 4) and ev["probs"].shape == (4, 1, 32, 32)
    assert (ev["counts"].sum(1) == 32 * 32).all()


def test_fit_records_precision_settings(splits, tmp_path):
    torch.manual_seed(0)
    history = train.fit(build_model(False, encoder_weights=None), *splits, epochs=1, batch_size=4, device="cpu",
                        out_dir=tmp_path, progress=False, log=None, amp=True, channels_last=True)
    assert math.isfinite(history[0]["train_loss"])
    settings = json.loads((tmp_path / "history.json").read_text())["settings"]
    assert settings["amp"] == "bfloat16" and settings["channels_last"] is True
    _, default = _fit(splits, tmp_path / "default", epochs=1)
    assert json.loads((tmp_path / "default" / "history.json").read_text())["settings"]["amp"] == "off"


class Faulty(torch.utils.data.Dataset):
    """A training set that can be interrupted (KeyboardInterrupt at its n-th item once armed) or
    poisoned (NaN images), switched on by fit's per-epoch log line - a deterministic point."""

    def __init__(self, base, after_epoch, fault, items=3):
        self.base, self.after, self.fault, self.left, self.armed = base, f"epoch {after_epoch:2d}/", fault, items, False

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = dict(self.base[i])
        if self.armed and self.fault == "interrupt":
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt  # in the middle of the next epoch
        if self.armed and self.fault == "nan":
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item

    def log(self, line):
        self.armed = self.armed or line.startswith(self.after)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _strip(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.slow
def test_interrupted_fit_resumes_to_the_same_history_and_weights(splits, tmp_path):
    reference, h_ref = _fit(splits, tmp_path / "ref", epochs=3)  # dropout and shuffling both draw random numbers
    faulty = Faulty(splits[0], after_epoch=2, fault="interrupt")
    torch.manual_seed(3)
    with pytest.raises(KeyboardInterrupt):
        train.fit(build_model(False, encoder_weights=None), faulty, splits[1], epochs=3, batch_size=4, seed=3,
                  device="cpu", out_dir=tmp_path / "run", progress=False, log=faulty.log)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and not (tmp_path / "run" / "checkpoint.pt").exists()
    assert {"torch", "generator", "python", "numpy", "cuda"} <= set(state["rng"])
    torch.manual_seed(99)  # another initialisation and global RNG: resuming must restore everything
    model, lines = build_model(False, encoder_weights=None), []
    history = train.fit(model, *splits, epochs=3, batch_size=4, seed=3, device="cpu", out_dir=tmp_path / "run",
                        progress=False, log=lines.append)
    assert "resuming after epoch 2 of 3" in lines[0]
    assert _strip(history) == _strip(h_ref)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    assert not (tmp_path / "run" / "last.pt").exists()  # the finished run keeps checkpoint.pt only
    assert train.read_history(tmp_path / "run" / "history.json") == history


def test_finished_fit_is_reused_not_retrained(splits, tmp_path, monkeypatch):
    model, history = _fit(splits, tmp_path, epochs=1)
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("retrained a finished run"))
    torch.manual_seed(7)
    again, lines = build_model(False, encoder_weights=None), []
    assert train.fit(again, *splits, epochs=1, batch_size=4, seed=3, device="cpu", out_dir=tmp_path,
                     progress=False, log=lines.append) == history
    assert len(lines) == 1 and "reused the finished training" in lines[0] and "(1 epoch, same settings)" in lines[0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


def test_the_closing_line_counts_epochs_as_words(splits):
    lines = []
    train.fit(build_model(False, encoder_weights=None), *splits, epochs=1, batch_size=4, seed=3, device="cpu",
              progress=False, log=lines.append)
    assert lines[-1].startswith("trained 1 epoch in ") and " s on cpu: test IoU " in lines[-1]


def test_checkpoint_of_an_earlier_version_loads_with_its_own_decoder_widths(splits, tmp_path):
    torch.manual_seed(0)
    old = build_model(False, encoder_weights=None, decoder_widths=(256, 128, 64, 32))  # the widths until issue 5
    train.save_run(tmp_path, old, {}, [])
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["decoder_widths"]  # files written before the widths were recorded
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    loaded, _ = train.load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded.config["decoder_widths"] == [256, 128, 64, 32]
    x = torch.stack([splits[1][i]["image"] for i in range(len(splits[1]))])
    with torch.no_grad():
        assert torch.equal(old.eval()(x), loaded(x))


def test_a_run_with_other_decoder_widths_is_refused(splits, tmp_path):
    torch.manual_seed(0)
    train.fit(build_model(False, encoder_weights=None, decoder_widths=(256, 128, 64, 32)), *splits, epochs=1,
              batch_size=4, seed=3, device="cpu", out_dir=tmp_path, progress=False, log=None)
    with pytest.raises(RunStateError, match=r"model decoder_widths \[256, 128, 64, 32\] saved, \[128, 64, 32, 16\] now"):
        _fit(splits, tmp_path, epochs=1)


def test_other_settings_are_refused_and_overwrite_retrains(splits, tmp_path):
    _fit(splits, tmp_path, epochs=1)
    with pytest.raises(RunStateError) as err:
        _fit(splits, tmp_path, epochs=2, seed=4)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: holds a training run with other settings")
    assert "epochs 1 saved, 2 now" in message and "seed 3 saved, 4 now" in message and "overwrite" in message
    with pytest.raises(RunStateError, match="model freeze_encoder False saved, True now"):
        _fit(splits, tmp_path, epochs=1, freeze=True)
    torch.manual_seed(3)
    lines = []
    history = train.fit(build_model(False, encoder_weights=None), *splits, epochs=2, batch_size=4, seed=3,
                        device="cpu", out_dir=tmp_path, overwrite=True, progress=False, log=lines.append)
    assert "overwrite: removed the earlier checkpoint.pt, history.json" in lines[0]
    assert len(history) == 2 and train.read_history(tmp_path / "history.json") == history


def test_unfinished_state_with_other_settings_or_damaged_is_refused(splits, tmp_path):
    faulty = Faulty(splits[0], after_epoch=1, fault="interrupt")
    with pytest.raises(KeyboardInterrupt):
        train.fit(build_model(False, encoder_weights=None), faulty, splits[1], epochs=3, batch_size=4, seed=3,
                  device="cpu", out_dir=tmp_path, progress=False, log=faulty.log)
    with pytest.raises(RunStateError, match=r"other settings \(batch_size 4 saved, 2 now\)"):
        train.fit(build_model(False, encoder_weights=None), *splits, epochs=3, batch_size=2, seed=3, device="cpu",
                  out_dir=tmp_path, progress=False, log=None)
    (tmp_path / "last.pt").write_bytes(b"half a file")
    with pytest.raises(RunStateError, match=f"{tmp_path / 'last.pt'}: cannot read the saved training state"):
        _fit(splits, tmp_path, epochs=3)


def test_nan_loss_stops_training_and_keeps_the_last_good_state(splits, tmp_path):
    faulty = Faulty(splits[0], after_epoch=1, fault="nan")
    with pytest.raises(TrainingDiverged) as err:
        train.fit(build_model(False, encoder_weights=None), faulty, splits[1], epochs=3, batch_size=4, seed=3,
                  device="cpu", out_dir=tmp_path, progress=False, log=faulty.log)
    message = str(err.value)
    assert message.startswith("training diverged at epoch 2, batch 1 of 2: training loss is nan")
    assert f"the last good state (after epoch 1) is kept in {tmp_path / 'last.pt'}" in message
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "history.json").exists()


def _fit_with(splits, out, optimizer_of, loss_fn=None, epochs=1, seed=3):
    torch.manual_seed(seed)
    model = build_model(False, encoder_weights=None)
    history = train.fit(model, *splits, epochs=epochs, batch_size=4, seed=seed, device="cpu", out_dir=out,
                        progress=False, log=None, optimizer=optimizer_of(model), loss_fn=loss_fn)
    return model, history


def test_the_optimizer_and_the_loss_given_are_the_ones_that_train_and_the_run_says_so(splits, tmp_path):
    # the report's recipe built outside fit trains exactly as fit's own NAdam does
    _, own = _fit(splits, tmp_path / "own", epochs=1)
    _, given = _fit_with(splits, tmp_path / "given", lambda m: torch.optim.NAdam(m.parameters(), lr=0.001),
                         torch.nn.BCEWithLogitsLoss())
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert strip(given) == strip(own)
    # an optimizer that cannot move the weights leaves them where they started: it is the one used
    torch.manual_seed(3)
    start = build_model(False, encoder_weights=None).state_dict()
    model, _ = _fit_with(splits, tmp_path / "sgd0", lambda m: torch.optim.SGD(m.parameters(), lr=0.0))
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items() if "running" not in k
               and "num_batches" not in k)
    saved = json.loads((tmp_path / "sgd0" / "history.json").read_text())["settings"]
    assert (saved["optimizer"], saved["lr"], saved["loss"]) == ("SGD", 0.0, "BCEWithLogitsLoss")
    assert "momentum=0" in saved["optimizer_settings"] and "lr=" not in saved["optimizer_settings"]
    adam = json.loads((tmp_path / "given" / "history.json").read_text())["settings"]
    assert adam["optimizer"] == "NAdam" and "momentum_decay=0.004" in adam["optimizer_settings"]
    _, _ = _fit_with(splits, tmp_path / "l1", lambda m: torch.optim.Adam(m.parameters(), lr=0.002), torch.nn.L1Loss())
    saved = json.loads((tmp_path / "l1" / "history.json").read_text())["settings"]
    assert (saved["optimizer"], saved["lr"], saved["loss"]) == ("Adam", 0.002, "L1Loss")


def test_another_optimizer_or_its_settings_do_not_reuse_a_run_and_a_foreign_optimizer_is_refused(splits, tmp_path):
    _fit_with(splits, tmp_path, lambda m: torch.optim.NAdam(m.parameters(), lr=0.001))
    with pytest.raises(RunStateError, match="optimizer 'NAdam' saved, 'Adam' now"):
        _fit_with(splits, tmp_path, lambda m: torch.optim.Adam(m.parameters(), lr=0.001))
    with pytest.raises(RunStateError, match="optimizer_settings .*weight_decay=0.*saved, .*weight_decay=0.01"):
        _fit_with(splits, tmp_path, lambda m: torch.optim.NAdam(m.parameters(), lr=0.001, weight_decay=0.01))
    other = build_model(False, encoder_weights=None)
    with pytest.raises(ValueError, match="does not hold the model's trainable parameters"):
        _fit_with(splits, tmp_path / "foreign", lambda m: torch.optim.NAdam(other.parameters(), lr=0.001))
