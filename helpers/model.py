"""MobileNetV2 encoder -> decoder -> 1-channel head, as in the report.

The encoder is torchvision's MobileNetV2 ``features``, split into five stages (``features[:2]``,
``[2:4]``, ``[4:7]``, ``[7:14]``, ``[14:]`` with 16, 24, 32, 96, 1280 channels at strides 2, 4,
8, 16, 32). Two decoders:

- ``"report"``: the report's decoder - four ConvTranspose2d layers (each doubles the resolution,
  followed by ReLU and Dropout(0.5)) on the last stage only, a 1x1 convolution to one logit
  channel, and a final bilinear interpolation to the input size;
- ``"unet"``: a U-Net style decoder that also uses the earlier stages through skip connections.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 19))
STAGE_CHANNELS = (16, 24, 32, 96, 1280)
# Widths of the four ConvTranspose2d layers. The report calls its decoder small and gives no widths.
# These give it 2.8 M parameters beside the encoder's 2.2 M. The earlier 256, 128, 64, 32 gave 5.9 M
# and made a training step at 128x128 about 1.5x as costly (see README, "Speed").
REPORT_CHANNELS = (128, 64, 32, 16)
IMAGENET_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"  # IMAGENET1K_V1's (a test checks)


def mobilenet_v2(**kwargs) -> nn.Module:
    """torchvision's ``mobilenet_v2``, imported when a model is first built: importing torchvision takes
    seconds (it imports torch._dynamo), which a process that only reads saved results never needs."""
    from torchvision.models import mobilenet_v2 as build

    return build(**kwargs)


def imagenet_weights():
    """torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1`` (imported when needed)."""
    from torchvision.models import MobileNet_V2_Weights

    return MobileNet_V2_Weights.IMAGENET1K_V1


class Encoder(nn.Module):
    """ImageNet-normalised MobileNetV2 features. x: B x 3 x H x W in [0, 1] -> 5 stage maps."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.stages = nn.ModuleList(features[a:b] for a, b in STAGES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class ReportDecoder(nn.Module):
    """Last stage B x 1280 x H/32 x W/32 -> B x 32 x H/2 x W/2 (four x2 transposed convs)."""

    def __init__(self, channels=REPORT_CHANNELS, dropout: float = 0.5):
        super().__init__()
        layers, c_in = [], STAGE_CHANNELS[-1]
        for c_out in channels:
            layers += [nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1),
                       nn.ReLU(inplace=True), nn.Dropout(dropout)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels, self.widths = c_in, tuple(channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.layers(feats[-1])


class UpBlock(nn.Module):
    """x2 transposed conv, concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = nn.Sequential(
            nn.Conv2d(c_out + c_skip, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Five stage maps -> B x 16 x H/2 x W/2, with skips at strides 16, 8, 4, 2."""

    def __init__(self, channels=(96, 64, 32, 16)):
        super().__init__()
        c_in, blocks = STAGE_CHANNELS[-1], []
        for c_skip, c_out in zip(reversed(STAGE_CHANNELS[:-1]), channels):
            blocks.append(UpBlock(c_in, c_skip, c_out))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.out_channels, self.widths = c_in, tuple(channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = block(x, skip)
        return x


class Resize(nn.Module):
    """The final interpolation: logits B x 1 x h x w -> B x 1 x H x W (bilinear), the input's size."""

    def forward(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    """encoder -> decoder -> head; logits are interpolated back to the input size."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, freeze_encoder: bool, config: dict):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.head = nn.Conv2d(decoder.out_channels, 1, kernel_size=1)
        self.resize = Resize()
        self.encoder_frozen = freeze_encoder
        self.encoder_bn_frozen = False  # fine-tuning with the encoder's BatchNorm statistics fixed (fit's encoder_bn)
        self.config = config
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        """Like nn.Module.train, but a frozen encoder stays in eval mode (BatchNorm stats fixed), and so do
        the encoder's BatchNorm layers when ``encoder_bn_frozen`` (they normalise with their saved
        statistics instead of each batch's, while their scale and shift still train)."""
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        elif self.encoder_bn_frozen:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x H x W in [0, 1] -> logits B x 1 x H x W."""
        logits = self.head(self.decoder(self.encoder(x)))
        return self.resize(logits, x.shape[-2:])


def imagenet_cache_file() -> Path:
    """Where torchvision caches the ImageNet MobileNetV2 checkpoint (under TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_URL).name


def _load_imagenet(progress: bool) -> nn.Sequential:
    try:
        return mobilenet_v2(weights=imagenet_weights(), progress=progress).features
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        cache = imagenet_cache_file()
        raise WeightsError(
            f"ImageNet weights for MobileNetV2 ({IMAGENET_URL}) could not be loaded: "
            f"{type(exc).__name__}: {exc}. Connect to the internet once (torchvision caches them in "
            f"{cache}), or copy that file there from a machine that has it, or pass "
            f"encoder_weights='/path/to/{cache.name}', or pass encoder_weights=None for random "
            "initialisation."
        ) from exc


def _load_path(path: Path) -> nn.Sequential:
    if not path.is_file():
        raise WeightsError(f"{path}: encoder weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file
        raise WeightsError(f"{path}: cannot read encoder weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    net = mobilenet_v2(weights=None)
    if isinstance(state, dict) and not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    try:
        net.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                      if k.startswith("features.")})
    except (RuntimeError, AttributeError) as exc:
        raise WeightsError(f"{path}: not a MobileNetV2 state dict ({exc})") from exc
    return net.features


class WeightsWarning(UserWarning):
    """The encoder starts from other weights than those asked for (``"auto"`` without ImageNet)."""


def load_encoder_features(encoder_weights, progress: bool = True) -> tuple[nn.Sequential, str]:
    """MobileNetV2 ``features`` and a description of the weights actually used.

    encoder_weights: "imagenet" (torchvision's IMAGENET1K_V1 via its cache), None (random), a
    path to a MobileNetV2 state dict, or "auto" (ImageNet when obtainable, else random - with a
    loud warning; the description says which).
    """
    if encoder_weights is None or encoder_weights == "none":
        return mobilenet_v2(weights=None).features, "random"
    if encoder_weights == "imagenet":
        return _load_imagenet(progress), "imagenet"
    if encoder_weights == "auto":
        try:
            return _load_imagenet(progress), "imagenet"
        except WeightsError as exc:
            message = f"encoder_weights='auto': ImageNet weights unavailable, using RANDOM initialisation. {exc}"
            warnings.warn(message, WeightsWarning, stacklevel=3)  # said once: shown by the notebook, or by the CLI
            return mobilenet_v2(weights=None).features, "random (auto: ImageNet weights unavailable)"
    return _load_path(Path(encoder_weights)), f"file:{Path(encoder_weights).name}"


def weights_argument(text: str):
    """An ``--encoder-weights`` value as :func:`load_encoder_features` takes it: None for "none" (any case),
    "imagenet" and "auto" as they are, and a file by its absolute path (relative to where the command
    runs), so that a run records the same file however it was named."""
    if text.lower() == "none":
        return None
    return text if text in ("auto", "imagenet") else str(Path(text).expanduser().resolve())


def build_model(freeze_encoder: bool, encoder_weights="imagenet", decoder: str = "report",
                progress: bool = True, decoder_widths=None) -> SegmentationModel:
    """The report's model. Freezing stops gradients into the encoder and fixes its BatchNorm stats.

    ``decoder_widths``: the decoder's four channel widths (None: REPORT_CHANNELS, or the U-Net's own).
    ``model.config`` records the settings, the widths and ``encoder_weights_used`` (what was really loaded).
    """
    decoders = {"report": ReportDecoder, "unet": UNetDecoder}
    if decoder not in decoders:
        raise ValueError(f"decoder must be one of {sorted(decoders)}, got {decoder!r}")
    features, used = load_encoder_features(encoder_weights, progress=progress)
    head = decoders[decoder]() if decoder_widths is None else decoders[decoder](tuple(decoder_widths))
    config = {"freeze_encoder": bool(freeze_encoder), "encoder_weights": None if encoder_weights is None
              else str(encoder_weights), "encoder_weights_used": used, "decoder": decoder,
              "decoder_widths": list(head.widths)}
    return SegmentationModel(Encoder(features), head, freeze_encoder, config)


def saved_decoder_widths(state: dict) -> list[int]:
    """The decoder widths of a saved state dict, read from its transposed convolutions' shapes (for
    checkpoints written before ``decoder_widths`` was recorded in the config)."""
    found = sorted((int(m.group(1)), tuple(v.shape)) for k, v in state.items()
                   if (m := re.fullmatch(r"decoder\.(?:layers|blocks)\.(\d+)\.(?:up\.)?weight", k)) and v.dim() == 4)
    return [shape[1] for _, shape in found]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable, frozen and total parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def layer_table(model: SegmentationModel, image_size: int = 128):
    """The model's layers as a table (pandas DataFrame), traced by torchinfo on one zero image of
    ``image_size`` x ``image_size``: the encoder's five stages (MobileNetV2 ``features[a:b]``), the
    decoder's layers (the report decoder's ConvTranspose2d, ReLU and Dropout; the U-Net's up-blocks),
    the head and the final resize, each with its output shape (channels x height x width), its
    parameter count and whether they train. The model's train/eval modes and the random state are left
    as they were."""
    import pandas as pd
    from torchinfo import summary

    info = summary(model, input_data=torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device),
                   depth=3, verbose=0, mode="eval")
    rows = []
    for layer in info.summary_list:
        path, parent = [layer.var_name], layer.parent_info
        while parent is not None and parent.depth > 0:
            path.insert(0, parent.var_name)
            parent = parent.parent_info
        top = path[0]
        if not ((top in ("encoder", "decoder") and layer.depth == 3) or (top in ("head", "resize") and layer.depth == 1)):
            continue
        kind = layer.class_name
        if top == "encoder":
            a, b = STAGES[int(path[-1])]
            kind = f"MobileNetV2 features[{a}:{b}]"
        params = int(layer.num_params)
        rows.append({"layer": ".".join(path), "type": kind,
                     "output shape": " x ".join(str(n) for n in layer.output_size[1:]),
                     "parameters": params,
                     "trains": "-" if params == 0 else ("yes" if layer.trainable_params == params else
                                                        "no" if layer.trainable_params == 0 else "partly")})
    return pd.DataFrame(rows).set_index("layer")


def decoder_facts(model: "SegmentationModel", size: int) -> dict:
    """Row 5's evidence, read off a model: its decoder's layers in order and the size of its output for one
    input of ``size`` x ``size`` (each seed's metrics.json keeps it as "architecture"; the scorecard reads it)."""
    layers = [m for m in model.decoder.modules() if isinstance(m, (nn.ConvTranspose2d, nn.Dropout))]
    convs, after = 0, []
    for m in layers:
        if isinstance(m, nn.ConvTranspose2d):
            convs += 1
            after.append(None)
        elif after and after[-1] is None:
            after[-1] = m.p
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        model.train(was)
    return {"conv_transpose": convs, "dropout_after_each": after, "input": [size, size],
            "output": list(out.shape[-2:]), "decoder": type(model.decoder).__name__}
