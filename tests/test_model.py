import urllib.error

import pytest
import torch
from torchvision.models import mobilenet_v2

from helpers.errors import WeightsError
from helpers.model import build_model, imagenet_cache_file, parameter_counts


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("decoder", ["report", "unet"])
def test_output_shape_is_one_logit_per_input_pixel(decoder, x):
    model = build_model(False, encoder_weights=None, decoder=decoder).eval()
    with torch.no_grad():
        assert model(x).shape == (2, 1, 64, 96)


def test_report_decoder_structure():
    model = build_model(False, encoder_weights=None)
    layers = list(model.decoder.layers)
    convs = [m for m in layers if isinstance(m, torch.nn.ConvTranspose2d)]
    drops = [m for m in layers if isinstance(m, torch.nn.Dropout)]
    assert len(convs) == 4 and len(drops) == 4 and all(d.p == 0.5 for d in drops)
    assert convs[0].in_channels == 1280
    assert model.head.out_channels == 1


def test_frozen_encoder_gets_no_gradient_and_keeps_batchnorm_stats(x):
    model = build_model(True, encoder_weights=None)
    counts = parameter_counts(model)
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    assert counts["frozen"] == encoder_params and counts["trainable"] == counts["total"] - encoder_params
    stats_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.train()
    assert not model.encoder.training and model.decoder.training
    opt = torch.optim.NAdam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(x).mean().backward()
        opt.step()
    assert all(p.grad is None for p in model.encoder.parameters())
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, stats_before[k]), k


def test_finetuned_encoder_trains(x):
    model = build_model(False, encoder_weights=None).train()
    before = model.encoder.stages[0][0][0].weight.clone()
    bn_before = model.encoder.stages[0][0][1].running_mean.clone()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    model(x).mean().backward()
    opt.step()
    assert not torch.equal(before, model.encoder.stages[0][0][0].weight)
    assert not torch.equal(bn_before, model.encoder.stages[0][0][1].running_mean)


def _fake_imagenet_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = mobilenet_v2(weights=None)
    torch.manual_seed(123)
    for p in reference.parameters():
        torch.nn.init.normal_(p)
    path = imagenet_cache_file()
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    return reference, path


def test_imagenet_weights_load_from_torch_home_cache(tmp_path, monkeypatch):
    reference, path = _fake_imagenet_checkpoint(tmp_path, monkeypatch)
    assert path == tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("must read the cache, not download"))
    model = build_model(True, encoder_weights="imagenet")
    assert model.config["encoder_weights_used"] == "imagenet"
    got = model.encoder.stages[0][0][0].weight
    assert torch.equal(got, reference.features[0][0].weight)
    assert torch.equal(model.encoder.stages[4][-1][0].weight, reference.features[18][0].weight)


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_imagenet_unavailable_raises_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    with pytest.raises(WeightsError) as err:
        build_model(False, encoder_weights="imagenet")
    message = str(err.value)
    assert "mobilenet_v2-b0353104.pth" in message and str(tmp_path) in message
    assert "encoder_weights=None" in message


def test_auto_falls_back_loudly_and_records_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        model = build_model(False, encoder_weights="auto")
    assert model.config["encoder_weights_used"].startswith("random")
    printed = capsys.readouterr()
    assert "RANDOM" not in printed.out + printed.err  # said once, as the warning: not printed beside it


def test_auto_uses_imagenet_when_cached(tmp_path, monkeypatch):
    _fake_imagenet_checkpoint(tmp_path, monkeypatch)
    assert build_model(False, encoder_weights="auto").config["encoder_weights_used"] == "imagenet"


def test_weights_from_a_path(tmp_path):
    reference = mobilenet_v2(weights=None)
    path = tmp_path / "mnv2.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(False, encoder_weights=path)
    assert torch.equal(model.encoder.stages[1][0].conv[0][0].weight, reference.features[2].conv[0][0].weight)


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_bad_weights_path_names_the_file(tmp_path, content):
    path = tmp_path / "w.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match="w.pth"):
        build_model(False, encoder_weights=path)


def test_unknown_decoder():
    with pytest.raises(ValueError, match="decoder"):
        build_model(False, encoder_weights=None, decoder="fpn")


def test_a_weights_argument_names_a_file_by_its_absolute_path(tmp_path, monkeypatch):
    from helpers.model import weights_argument

    monkeypatch.chdir(tmp_path)
    assert weights_argument("None") is None and weights_argument("imagenet") == "imagenet"
    assert weights_argument("auto") == "auto" and weights_argument("w.pth") == str(tmp_path.resolve() / "w.pth")


def test_the_layer_table_traces_the_report_architecture_at_128():
    from helpers.model import layer_table, parameter_counts

    torch.manual_seed(0)
    model = build_model(True, encoder_weights=None)
    state, training = torch.random.get_rng_state(), model.training
    table = layer_table(model, 128)
    assert torch.equal(state, torch.random.get_rng_state()) and model.training == training
    assert not model.encoder.training  # a frozen encoder stays in eval mode
    shapes = table["output shape"].to_dict()
    assert [shapes[f"encoder.stages.{i}"] for i in range(5)] == [
        "16 x 64 x 64", "24 x 32 x 32", "32 x 16 x 16", "96 x 8 x 8", "1280 x 4 x 4"]
    convs = table[table["type"] == "ConvTranspose2d"]
    assert list(convs["output shape"]) == ["128 x 8 x 8", "64 x 16 x 16", "32 x 32 x 32", "16 x 64 x 64"]
    assert list(table["type"]).count("Dropout") == 4 and list(table["type"]).count("ReLU") == 4
    order = list(table["type"])  # each transposed convolution is followed by ReLU and Dropout
    assert all(order[i + 1:i + 3] == ["ReLU", "Dropout"] for i, t in enumerate(order) if t == "ConvTranspose2d")
    assert shapes["head"] == "1 x 64 x 64" and shapes["resize"] == "1 x 128 x 128"  # the final interpolation
    counts = parameter_counts(model)
    assert table["parameters"].sum() == counts["trainable"] + counts["frozen"]
    assert set(table.loc[[f"encoder.stages.{i}" for i in range(5)], "trains"]) == {"no"}
    assert set(convs["trains"]) == {"yes"}
    unet = layer_table(build_model(False, encoder_weights=None, decoder="unet"), 64)
    assert unet.loc["decoder.blocks.3", "output shape"] == "16 x 32 x 32" and unet.loc["resize", "output shape"] == \
        "1 x 64 x 64" and set(unet["trains"]) <= {"yes", "-"}
