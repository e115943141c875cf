"""fit with Model 3's recipe: augmentation, BCE + Dice, lr schedules, the best validation epoch, resume."""

import json

import pytest
import torch

from helpers import cache, recipe, train
from helpers.model import build_model

from test_train import Faulty, _strip

RECIPE = {"augment": True, "loss": "bce_dice", "schedule": "cosine", "select": "best", "eval_split": "validation"}


@pytest.fixture
def splits(tiny_isic):  # the "test" images play the validation split here
    return (cache.load_dataset(tiny_isic, "train", 32, progress=False),
            cache.load_dataset(tiny_isic, "test", 32, progress=False))


def _fit(train_set, val_set, out, epochs=3, log=None, seed=3, **kw):
    torch.manual_seed(seed)
    model = build_model(False, encoder_weights=None, decoder="unet")
    history = train.fit(model, train_set, val_set, epochs=epochs, batch_size=4, seed=seed, device="cpu", out_dir=out,
                        progress=False, log=log, **{**RECIPE, **kw})
    return model, history


def test_recipe_settings_and_history_name_the_validation_split(splits, tmp_path):
    _, history = _fit(*splits, tmp_path, epochs=2)
    saved = json.loads((tmp_path / "history.json").read_text())
    s = saved["settings"]
    assert s["loss"] == "BCEWithLogitsLoss + soft Dice" and s["schedule"].startswith("cosine") and s["select"] == "best"
    assert s["augment"].startswith("flips=True") and s["eval_split"] == "validation"
    assert set(history[0]) == {"epoch", "train_loss", "val_loss", "val_iou", "val_dice", "seconds"}


def test_the_best_validation_epoch_is_kept(splits, tmp_path):
    model, history = _fit(*splits, tmp_path, epochs=4, lr=0.01)
    best = max(history, key=lambda r: r["val_iou"])
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["selected_epoch"] == best["epoch"] and len(saved["history"]) == 4
    ev = train.evaluate(model, train.make_loader(splits[1], 4, False), torch.device("cpu"))
    from helpers import metrics
    assert float(metrics.jaccard(ev["counts"], "macro")) == pytest.approx(best["val_iou"], abs=1e-9)
    reloaded, ckpt = train.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["selected_epoch"] == best["epoch"]
    assert all(torch.equal(v, model.state_dict()[k].cpu()) for k, v in reloaded.state_dict().items())


@pytest.mark.slow
def test_an_interrupted_recipe_run_resumes_to_the_same_history_and_weights(splits, tmp_path):
    """The lr schedule, the augmentation generator and the best epoch so far are saved with last.pt."""
    reference, h_ref = _fit(*splits, tmp_path / "ref", epochs=3)
    faulty = Faulty(splits[0], after_epoch=2, fault="interrupt")
    with pytest.raises(KeyboardInterrupt):
        _fit(faulty, splits[1], tmp_path / "run", epochs=3, log=faulty.log)
    extra = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["extra"]
    assert {"scheduler", "augment_rng", "best"} <= set(extra)
    lines = []
    model, history = _fit(*splits, tmp_path / "run", epochs=3, log=lines.append, seed=3)
    assert "resuming after epoch 2 of 3" in lines[0]
    assert _strip(history) == _strip(h_ref)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())


def test_choosing_an_epoch_on_the_test_split_is_refused(splits, tmp_path):
    with pytest.raises(ValueError, match="validation split"):
        _fit(*splits, tmp_path, epochs=1, eval_split="test")


def test_the_reports_recipe_draws_no_augmentation_and_no_schedule(splits, tmp_path, monkeypatch):
    """Models 1 and 2 keep the report's recipe: plain BCE, constant lr, no augmentation, last epoch."""
    monkeypatch.setattr(recipe, "augment_batch", lambda *a, **k: pytest.fail("augmented a report-recipe run"))
    made = []
    real = recipe.make_scheduler
    monkeypatch.setattr(recipe, "make_scheduler", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    torch.manual_seed(0)
    model = build_model(True, encoder_weights=None)
    train.fit(model, *splits, epochs=2, batch_size=4, seed=0, device="cpu", out_dir=tmp_path, progress=False, log=None)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert made == [None] and saved["selected_epoch"] == 2
    assert {k: saved["settings"][k] for k in ("loss", "schedule", "augment", "select", "eval_split")} == {
        "loss": "BCEWithLogitsLoss", "schedule": "constant", "augment": "off", "select": "last", "eval_split": "test"}


def test_a_run_saved_before_the_recipe_settings_existed_still_resumes(splits, tmp_path):
    """Its settings lack the recipe keys: they read as the report's recipe, so nothing is refused."""
    torch.manual_seed(0)
    model = build_model(True, encoder_weights=None)
    history = train.fit(model, *splits, epochs=1, batch_size=4, seed=0, device="cpu", out_dir=tmp_path,
                        progress=False, log=None)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("eval_split", "select", "augment", "schedule", "ema", "encoder_lr", "encoder_bn", "deep_supervision"):
        del ckpt["settings"][key]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    lines = []
    again = train.fit(build_model(True, encoder_weights=None), *splits, epochs=1, batch_size=4, seed=0, device="cpu",
                      out_dir=tmp_path, progress=False, log=lines.append)
    assert again == history and "reused the finished training" in lines[0]


def test_the_weight_average_is_the_bias_corrected_ema_of_the_steps():
    """After states x1..xt, the average of decay d is sum d**(t-s) x_s / sum d**(t-s); integer buffers are copied."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(100.0)  # the initial state never counts
    avg = recipe.WeightAverage(net, (0.5, 0.9))
    states = [1.0, 2.0, 4.0]
    for t, x in enumerate(states, 1):
        with torch.no_grad():
            net[0].weight.fill_(x)
            net[1].num_batches_tracked.fill_(t)
        avg.update(net)
    for decay, a in zip(avg.decays, avg.averages):
        w = [decay ** (len(states) - s) for s in range(1, len(states) + 1)]
        expected = sum(wi * x for wi, x in zip(w, states)) / sum(w)
        assert torch.allclose(a["0.weight"], torch.full((1, 2), expected))
        assert int(a["1.num_batches_tracked"]) == 3
    copy = recipe.WeightAverage(net, (0.5, 0.9))
    copy.load_state_dict(avg.state_dict())
    assert copy.steps == 3 and all(torch.equal(a[k], b[k]) for a, b in zip(avg.averages, copy.averages) for k in a)
    with pytest.raises(ValueError, match="saved decays"):
        recipe.WeightAverage(net, (0.5,)).load_state_dict(avg.state_dict())
    with pytest.raises(ValueError, match="decays must be in"):
        recipe.WeightAverage(net, (1.0,))


@pytest.mark.slow
def test_an_interrupted_run_with_weight_averages_resumes_them_exactly(splits, tmp_path):
    """The moving averages are saved in last.pt each epoch; the finished checkpoint holds them beside the
    last epoch's weights."""
    ema = {"ema": (0.9, 0.5), "select": "last"}
    reference, h_ref = _fit(*splits, tmp_path / "ref", epochs=3, **ema)
    faulty = Faulty(splits[0], after_epoch=2, fault="interrupt")
    with pytest.raises(KeyboardInterrupt):
        _fit(faulty, splits[1], tmp_path / "run", epochs=3, log=faulty.log, **ema)
    extra = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["extra"]
    assert extra["ema"]["decays"] == [0.9, 0.5] and extra["ema"]["steps"] == 2 * 2  # 6 images in batches of 4
    lines = []
    _, history = _fit(*splits, tmp_path / "run", epochs=3, log=lines.append, **ema)
    assert "resuming after epoch 2 of 3" in lines[0] and _strip(history) == _strip(h_ref)
    ref, run = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (tmp_path / "ref", tmp_path / "run"))
    assert run["settings"]["ema"] == "0.9, 0.5" and run["ema"]["steps"] == 6
    for a, b in zip(ref["ema"]["averages"], run["ema"]["averages"]):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(v, reference.state_dict()[k].cpu()) for k, v in run["model"].items())
    assert not all(torch.equal(v, run["ema"]["averages"][0][k]) for k, v in run["model"].items())


def test_select_ema_keeps_the_average_and_other_decays_are_refused(splits, tmp_path):
    from helpers.errors import RunStateError

    model, _ = _fit(*splits, tmp_path, epochs=2, select="ema")
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["settings"]["ema"] == str(train.EMA_DECAY) and ckpt["settings"]["select"] == "ema"
    assert all(torch.equal(v, ckpt["ema"]["averages"][0][k]) for k, v in ckpt["model"].items())
    assert all(torch.equal(v.cpu(), ckpt["model"][k]) for k, v in model.state_dict().items())
    with pytest.raises(RunStateError, match="ema '0.995' saved, '0.9' now"):
        _fit(*splits, tmp_path, epochs=2, select="ema", ema=(0.9,))


def test_keeping_weight_averages_does_not_change_the_training(splits, tmp_path):
    plain, h_plain = _fit(*splits, tmp_path / "plain", epochs=2, select="last")
    tracked, h_tracked = _fit(*splits, tmp_path / "tracked", epochs=2, select="last", ema=(0.9,))
    assert _strip(h_plain) == _strip(h_tracked)
    assert all(torch.equal(v, tracked.state_dict()[k]) for k, v in plain.state_dict().items())


def test_the_main_job_trains_model3_with_the_lovasz_loss_the_weight_average_frozen_bn_and_deep_supervision(
        tiny_isic, tmp_path):
    from helpers import data, training
    from helpers.settings import RunConfig, model3_recipe

    c = RunConfig(data="auto", data_dir=str(tiny_isic), image_size=32, epochs=1, run_dir=str(tmp_path / "run"),
                  cache_dir=str(tmp_path / "cache"), progress=False, encoder_weights=None,
                  m3_recipe="strong")  # BatchNorm frozen, 2 x epochs, deep supervision, half the rate
    recipe = {**model3_recipe(c), "loss": "bce_lovasz", "select": "ema"}  # a recipe of the ablation's
    d = data.prepare_data(c, log=lambda line: None)
    model = training.new_model(c, freeze_encoder=False, decoder="unet")
    result = training.train_and_evaluate(c, d, model, "model3_unet", recipe=recipe)
    assert result["metrics"]["recipe"]["loss"] == "bce_lovasz" and result["metrics"]["recipe"]["select"] == "ema"
    assert result["metrics"]["recipe"]["preset"] == "strong" and len(result["history"]) == 2
    ckpt = torch.load(tmp_path / "run" / "model3_unet" / "seed0" / "checkpoint.pt", weights_only=True)
    assert ckpt["settings"]["loss"] == "BCEWithLogitsLoss + Lovasz hinge" and ckpt["settings"]["select"] == "ema"
    assert result["metrics"]["recipe"]["encoder_bn"] == "frozen" and ckpt["settings"]["encoder_bn"] == "frozen"
    assert result["metrics"]["recipe"]["deep_supervision"] == 0.5 and ckpt["settings"]["deep_supervision"] == 0.5
    assert result["metrics"]["recipe"]["lr"] == 0.0005 and ckpt["settings"]["lr"] == 0.0005  # half of LR
    assert result["metrics"]["training"]["optimizer"] == "NAdam" and result["metrics"]["training"]["lr"] == 0.0005
    assert ckpt["model"].keys() == training.new_model(c, freeze_encoder=False, decoder="unet").state_dict().keys()
    assert all(torch.equal(v, ckpt["ema"]["averages"][0][k]) for k, v in ckpt["model"].items())
    with pytest.raises(ValueError, match="m3_recipe must be one of"):
        RunConfig(m3_recipe="best")
    for bad in (0, -1e-3, float("nan"), float("inf"), "0.001", True, None):
        with pytest.raises(ValueError, match="lr is a learning rate, a finite number above 0"):
            RunConfig(lr=bad)


def test_the_named_recipes_set_what_they_say():
    from helpers.settings import M3_RECIPES, RunConfig, model3_recipe, recipe_table

    named = ("preset", "epochs", "encoder_bn", "deep_supervision", "lr")  # what sets the recipes apart
    default = model3_recipe(RunConfig(epochs=25))
    assert tuple(default[k] for k in named) == ("default", 25, "train", 0.0, 0.001)
    strong = model3_recipe(RunConfig(epochs=25, m3_recipe="strong"))
    assert tuple(strong[k] for k in named) == ("strong", 50, "frozen", 0.5, 0.0005)
    assert {k: v for k, v in strong.items() if k not in named} == {k: v for k, v in default.items() if k not in named}
    assert (default["augment"], default["loss"], default["schedule"], default["select"]) == (
        True, "bce_dice", "cosine", "last")
    assert model3_recipe(RunConfig(epochs=25, m3_recipe="strong", m3_epochs=30))["epochs"] == 30
    assert model3_recipe(RunConfig(lr=0.004, m3_recipe="strong"))["lr"] == 0.002  # a fraction of LR
    assert model3_recipe(RunConfig(epochs=3, m3_recipe="strong"))["epochs"] == 6
    assert model3_recipe(RunConfig(image_size=96))["image_size"] == 96
    table = recipe_table(RunConfig(epochs=10, m3_recipe="strong", m3_epochs=None))
    assert list(table.columns) == [*M3_RECIPES, "this run (strong)"]
    assert list(table.loc["epochs"]) == ["EPOCHS", "EPOCHS x 2", 20]
    assert list(table.loc["learning rate"]) == ["LR", "LR x 0.5", 0.0005]
    assert list(table.loc["working size"]) == ["IMAGE_SIZE", "IMAGE_SIZE", 128]
    assert table.loc["weights kept", "default"] == "last" and table.loc["deep supervision weight", "strong"] == 0.5


def test_the_main_job_takes_the_named_recipe_and_the_tta_mode_from_its_command_line():
    from helpers.tools.reproduce import build_parser, notebook_parameters
    from helpers.settings import RunConfig

    args = build_parser().parse_args(["--m3-recipe", "strong", "--tta", "dihedral", "--m3-epochs", "7"])
    assert (args.m3_recipe, args.tta, args.m3_epochs) == ("strong", "dihedral", 7)
    assert build_parser().parse_args(["--tta"]).tta == "flips" and build_parser().parse_args([]).tta is False
    params = notebook_parameters(RunConfig(m3_recipe=args.m3_recipe, tta=args.tta, m3_epochs=args.m3_epochs))
    assert params["M3_RECIPE"] == "strong" and params["TTA"] == "dihedral" and params["M3_EPOCHS"] == 7
    for knob in ("--m3-loss", "--m3-lr", "--m3-select", "--m3-deep-supervision"):  # the ablation's, not the main job's
        with pytest.raises(SystemExit):
            build_parser().parse_args([knob, "1"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--m3-recipe", "best"])
    with pytest.raises(ValueError, match="tta must be"):
        RunConfig(tta="rotations")


def test_deep_supervision_adds_the_mean_auxiliary_loss_of_the_decoders_earlier_blocks():
    torch.manual_seed(0)
    model = build_model(False, encoder_weights=None, decoder="unet").train()
    bce = torch.nn.BCEWithLogitsLoss()
    loss_fn = recipe.DeepSupervision(bce, model.decoder, 0.5)
    x, y = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    seen = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o)) for k, b in enumerate(model.decoder.blocks)]
    with loss_fn.hooked():
        logits = model(x)
        got = loss_fn(logits, y)
        assert [seen[k].shape[1] for k in range(3)] == [h.in_channels for h in loss_fn.heads] == [96, 64, 32]
        assert [seen[k].shape[-1] for k in range(3)] == [4, 8, 16]  # strides 16, 8 and 4 of the 64-px input
        aux = [bce(torch.nn.functional.interpolate(h(seen[k]), size=(64, 64), mode="bilinear", align_corners=False), y)
               for k, h in enumerate(loss_fn.heads)]
        assert got.item() == pytest.approx((bce(logits, y) + 0.5 * sum(aux) / 3).item(), rel=1e-6)
        with pytest.raises(RuntimeError, match="training mode"):
            loss_fn(logits, y)  # the blocks' outputs are used once
        model.eval()
        with torch.no_grad():
            model(x)
        with pytest.raises(RuntimeError, match="training mode"):
            loss_fn(logits, y)  # evaluation passes feed no heads
    for h in hooks:
        h.remove()
    assert all(not b._forward_hooks for b in model.decoder.blocks)  # the context took its hooks off
    with pytest.raises(ValueError, match="U-Net decoder"):
        recipe.DeepSupervision(bce, build_model(False, encoder_weights=None).decoder, 0.5)
    with pytest.raises(ValueError, match="> 0"):
        recipe.DeepSupervision(bce, model.decoder, -1.0)


@pytest.mark.slow
def test_deep_supervision_trains_heads_that_resume_exactly_and_stay_out_of_the_checkpoint(splits, tmp_path):
    ds = {"deep_supervision": 0.5}
    reference, h_ref = _fit(*splits, tmp_path / "ref", epochs=3, **ds)
    _, h_off = _fit(*splits, tmp_path / "off", epochs=3)
    assert _strip(h_off) != _strip(h_ref)  # the auxiliary losses change the training
    faulty = Faulty(splits[0], after_epoch=2, fault="interrupt")
    with pytest.raises(KeyboardInterrupt):
        _fit(faulty, splits[1], tmp_path / "run", epochs=3, log=faulty.log, **ds)
    heads = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["extra"]["deep_supervision_heads"]
    assert sorted(heads) == [f"{i}.{p}" for i in range(3) for p in ("bias", "weight")]
    lines = []
    model, history = _fit(*splits, tmp_path / "run", epochs=3, log=lines.append, **ds)
    assert "resuming after epoch 2 of 3" in lines[0] and _strip(history) == _strip(h_ref)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["settings"]["deep_supervision"] == 0.5 and set(ckpt["model"]) == set(reference.state_dict())
    assert all(not b._forward_hooks for b in model.decoder.blocks)
    with pytest.raises(Exception, match="deep_supervision"):
        _fit(*splits, tmp_path / "run", epochs=3)  # a finished deep-supervised run is not reused as one without
