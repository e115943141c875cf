"""Training-recipe ingredients for Model 3: batch augmentation, losses, learning-rate schedules.

Each ingredient is a pure function whose settings are arguments; :mod:`helpers.train` picks them by
name. The report's recipe is no augmentation, loss "bce" and schedule "constant".
"""

from __future__ import annotations

import contextlib
import inspect
import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

# RGB -> YIQ (NTSC); its Y row is the grey level torchvision uses, and I and Q sum to 0 on greys
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB = torch.linalg.inv(_YIQ)  # inverted once here: linalg.inv on a CUDA tensor waits for the GPU
_DRAWS = 10  # uniform numbers per sample: hflip, vflip, rot90, zoom, x shift, y shift, 4 jitter factors


def augment_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, *, flips: bool = True,
                  rot90: bool = True, scale: tuple[float, float] | None = (0.75, 1.25),
                  jitter: tuple[float, float, float, float] | None = (0.2, 0.2, 0.2, 0.05),
                  rotate: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly augmented copies of a batch, with parameters drawn per sample; inputs are not modified.

    images: float B x 3 x S x S in [0, 1]; masks: float B x 1 x S x S in {0, 1} (square, same device).
    Returns (images, masks) of the same shapes; masks stay exactly 0/1, images are clamped to [0, 1].

    - flips: horizontal and vertical flip, each with probability 1/2; rot90: rotation by 0, 90, 180
      or 270 degrees. Both are exact index operations (``torch.where`` over the batch).
    - scale (lo, hi): zoom by a factor drawn uniformly in [lo, hi] (above 1: zoom in), shifted at
      random so that the view stays inside the image (zoom in) or the image inside the view (zoom
      out); one ``affine_grid`` + ``grid_sample`` over images and masks together, bilinear, masks
      thresholded at 0.5. Outside the source (zoom out) is zeros: black like a dermoscope's
      vignetted corners and background in the mask, never a mirrored copy of the lesion.
    - rotate: a rotation by an angle drawn uniformly in [-rotate, rotate] degrees about the view's
      centre (0: none), in the same ``affine_grid`` pass as the zoom; the corners it brings in from
      outside the image are zeros, as for a zoom out. Its angle is one more uniform number per sample,
      drawn after the others and only when ``rotate`` is on, so the other draws stay those of
      ``rotate=0``.
    - jitter (brightness, contrast, saturation, hue): factors drawn in [1 - b, 1 + b], [1 - c, 1 + c],
      [1 - s, 1 + s] and a hue shift in [-h, h] turns (h <= 0.5), applied in that order as in
      torchvision's ColorJitter but as one 3 x 3 matrix and offset per sample: hue is a rotation of
      the chroma (I, Q) plane in YIQ space, an approximation of an HSV hue shift; one clamp at the
      end. Masks are never jittered.

    All ``10`` uniform numbers per sample are drawn at once from ``generator`` whatever the options,
    so switching one ingredient off leaves the others' draws unchanged; the same generator state
    gives the same output. The generator must be on the inputs' device: make it with
    ``torch.Generator(device=images.device).manual_seed(seed)`` (CPU and CUDA generators give
    different streams for the same seed).

    Why not torchvision.transforms.v2 on the whole batch: a v2 transform called on a B x C x H x W
    tensor draws ONE set of random parameters and applies it to every sample (checked with
    torchvision 0.29 for ColorJitter, RandomHorizontalFlip, RandomResizedCrop and RandomRotation on
    a batch of identical images: every output identical; see tests/test_recipe.py); per-sample v2
    calls would be a Python loop over the images.
    """
    if images.shape[-1] != images.shape[-2] or images.shape[1:2] != (3,) or masks.shape[1:2] != (1,):
        raise ValueError(f"augment_batch: expected B x 3 x S x S images and B x 1 x S x S masks, "
                         f"got {tuple(images.shape)} and {tuple(masks.shape)}")
    u = torch.rand(len(images), _DRAWS, generator=generator, device=images.device)
    x = torch.cat([images, masks.to(images.dtype)], 1)  # one geometric pass for both
    if flips or rot90:
        x = _dihedral(x, u[:, 0] < 0.5 if flips else None, u[:, 1] < 0.5 if flips else None,
                      (u[:, 2] * 4).long().clamp(max=3) if rot90 else None)
    if rotate < 0:
        raise ValueError(f"augment_batch: rotate must be a non-negative angle in degrees, got {rotate!r}")
    angle = None
    if rotate:
        angle = math.radians(rotate) * (2 * torch.rand(len(images), generator=generator, device=images.device) - 1)
    if scale is not None or angle is not None:
        x = _zoom(x, scale or (1.0, 1.0), u[:, 3:6], angle)
    out, mask = x[:, :3], (x[:, 3:] > 0.5).to(masks.dtype)
    if jitter is not None:
        out = _jitter(out, jitter, u[:, 6:10])
    return out.clamp(0, 1), mask


def _dihedral(x: torch.Tensor, hflip, vflip, k) -> torch.Tensor:
    """rot90(vflip(hflip(x)), k) per sample, as a transpose then a row flip then a column flip.

    hflip, vflip: bool B (None: no flip); k: long B of quarter turns counterclockwise (None: 0).
    torch.rot90 by k = 1, 2, 3 is (transpose, flip rows), (flip rows, flip columns), (transpose, flip
    columns); flips done before a transpose become the other axis's flips after it.
    """
    no = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    hflip = no if hflip is None else hflip
    vflip = no if vflip is None else vflip
    k = torch.zeros(len(x), dtype=torch.long, device=x.device) if k is None else k
    t = k % 2 == 1
    rows = (k == 1) | (k == 2)
    cols = (k == 2) | (k == 3)
    rows = rows ^ torch.where(t, hflip, vflip)
    cols = cols ^ torch.where(t, vflip, hflip)
    view = (-1, 1, 1, 1)
    x = torch.where(t.view(view), x.transpose(-2, -1), x)
    x = torch.where(rows.view(view), x.flip(-2), x)
    return torch.where(cols.view(view), x.flip(-1), x)


def _zoom(x: torch.Tensor, scale: tuple[float, float], u: torch.Tensor, angle: torch.Tensor | None = None
          ) -> torch.Tensor:
    """Zoom each sample by a factor in ``scale`` about a random centre; u: B x 3 uniforms (zoom, dx, dy);
    angle: B rotations in radians (None: none), applied to the view about its centre."""
    lo, hi = scale
    if not 0 < lo <= hi:
        raise ValueError(f"augment_batch: scale must be (lo, hi) with 0 < lo <= hi, got {scale!r}")
    side = 1 / (lo + (hi - lo) * u[:, 0])  # the view's side as a fraction of the image's
    room = (1 - side).abs()  # how far the view's centre may move, in [-1, 1] coordinates
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    if angle is None:
        theta[:, 0, 0] = theta[:, 1, 1] = side
    else:
        cos, sin = side * torch.cos(angle).to(x.dtype), side * torch.sin(angle).to(x.dtype)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, :, 2] = room[:, None] * (2 * u[:, 1:] - 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _jitter(x: torch.Tensor, jitter: tuple[float, float, float, float], u: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue per sample as x -> A x + d; u: B x 4 uniforms."""
    b, c, s, h = jitter
    if min(jitter) < 0 or h > 0.5:
        raise ValueError(f"augment_batch: jitter must be 4 non-negative numbers, hue <= 0.5, got {jitter!r}")
    bright, contrast, sat = (1 + amount * (2 * u[:, i] - 1) for i, amount in enumerate((b, c, s)))
    angle = 2 * math.pi * h * (2 * u[:, 3] - 1)
    yiq, rgb = _YIQ.to(x), _RGB.to(x)
    chroma = torch.zeros(len(x), 3, 3, dtype=x.dtype, device=x.device)
    chroma[:, 0, 0] = 1
    chroma[:, 1, 1] = chroma[:, 2, 2] = sat * torch.cos(angle)
    chroma[:, 1, 2], chroma[:, 2, 1] = -sat * torch.sin(angle), sat * torch.sin(angle)
    a = (bright * contrast)[:, None, None] * (rgb @ chroma @ yiq)
    grey = torch.einsum("c,bchw->b", yiq[0], x) / x[0, 0].numel()  # mean grey level before brightness
    d = ((1 - contrast) * bright * grey)[:, None, None, None]  # greys are fixed points of the chroma matrix
    return torch.einsum("bij,bjhw->bihw", a, x) + d


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) against target, per image, averaged over the batch.

    logits, target: B x 1 x S x S (target in {0, 1}). Per image, Dice = (2 sum(p t) + eps) /
    (sum p + sum t + eps); eps keeps an empty mask predicted empty at loss 0.
    """
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    dice = (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return 1 - dice.mean()


def lovasz_hinge_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Lovasz hinge of each image (Berman et al., 2018: a convex surrogate of 1 - Jaccard), averaged
    over the batch.

    logits, target: B x 1 x S x S (target in {0, 1}). Per image, the hinge errors 1 - logit x (2t - 1)
    are sorted in decreasing order and weighted by the steps of the Jaccard loss of the prefixes
    (the Lovasz extension's gradient), so the weight of a pixel is how much the Jaccard index of
    the image would lose if it and every worse pixel were wrong. An image whose truth is empty
    weighs only its worst pixel.
    """
    errors = 1 - logits.float().flatten(1) * (2 * target.float().flatten(1) - 1)
    errors, order = errors.sort(dim=1, descending=True)
    truth = target.float().flatten(1).gather(1, order)
    positives = truth.sum(1, keepdim=True)
    intersection = positives - truth.cumsum(1)
    union = positives + (1 - truth).cumsum(1)  # at least 1 at every position
    jaccard_loss = 1 - intersection / union
    weights = torch.cat([jaccard_loss[:, :1], jaccard_loss[:, 1:] - jaccard_loss[:, :-1]], 1)
    return (F.relu(errors) * weights).sum(1).mean()


class BCEPlus(nn.Module):
    """BCEWithLogitsLoss (mean per pixel) + a per-image region loss ``term(logits, target)``, equal weights."""

    def __init__(self, term):
        super().__init__()
        self.bce, self.term = nn.BCEWithLogitsLoss(), term

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(logits, target) + self.term(logits, target)


LOSSES = {"bce": nn.BCEWithLogitsLoss, "bce_dice": partial(BCEPlus, soft_dice_loss),
          "bce_lovasz": partial(BCEPlus, lovasz_hinge_loss)}


def make_loss(name: str) -> nn.Module:
    """The training loss ``name``: "bce" (BCEWithLogitsLoss, the report's), "bce_dice" (BCE + soft Dice)
    or "bce_lovasz" (BCE + Lovasz hinge)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
    return LOSSES[name]()


class DeepSupervision(nn.Module):
    """Deep supervision for the U-Net decoder: ``loss_fn`` on the model's logits plus ``weight`` times
    the mean of ``loss_fn`` on auxiliary logits, one 1x1-conv head over the output of each decoder block
    but the last (strides 16, 8 and 4), upsampled bilinearly to the mask's size.

    The heads read the blocks' outputs through forward hooks while the model is in training mode, so
    the model itself is unchanged: the heads train with it and are dropped after training (they are
    not in its state dict or checkpoint). Use it inside :meth:`hooked`, right after the model's forward
    pass, like the loss.
    """

    def __init__(self, loss_fn: nn.Module, decoder: nn.Module, weight: float):
        super().__init__()
        blocks = getattr(decoder, "blocks", None)
        if blocks is None or len(blocks) < 2:
            raise ValueError("deep supervision needs the U-Net decoder (decoder='unet'): the report's decoder "
                             "has no stages to supervise")
        if not weight > 0:
            raise ValueError(f"deep supervision's weight must be > 0, got {weight!r}")
        self.loss_fn, self.weight = loss_fn, float(weight)
        self.heads = nn.ModuleList(nn.Conv2d(block.up.out_channels, 1, kernel_size=1) for block in blocks[:-1])
        self._blocks = list(blocks[:-1])
        self._features: dict[int, torch.Tensor] = {}

    def _keep(self, index: int, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if module.training:
            self._features[index] = output

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if len(self._features) != len(self.heads):
            raise RuntimeError("deep supervision: call the model in training mode before the loss")
        feats, self._features = self._features, {}
        aux = [self.loss_fn(F.interpolate(head(feats[i].float()), size=target.shape[-2:], mode="bilinear",
                                          align_corners=False), target) for i, head in enumerate(self.heads)]
        return self.loss_fn(logits, target) + self.weight * torch.stack(aux).mean()

    @contextlib.contextmanager
    def hooked(self):
        """While in this context, the decoder's blocks pass their outputs to the heads."""
        hooks = [block.register_forward_hook(partial(self._keep, i)) for i, block in enumerate(self._blocks)]
        try:
            yield self
        finally:
            for hook in hooks:
                hook.remove()
            self._features = {}


SCHEDULES = ("constant", "cosine", "onecycle")


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, *, epochs: int, steps_per_epoch: int,
                   warmup_epochs: int = 1) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Learning-rate schedule ``name`` for ``optimizer``, to be stepped after every batch; None for "constant".

    Step s (0-based) of T = epochs x steps_per_epoch trains at the optimizer's lr times:
    - "constant" (the report's): 1; returns None.
    - "cosine": (s + 1) / W for the W = warmup_epochs x steps_per_epoch warm-up steps, then
      (1 + cos(pi (s - W) / (T - W))) / 2, which reaches 0 after the last step.
    - "onecycle": torch's OneCycleLR with max_lr = the optimizer's lr, reached after the warm-up
      (pct_start = W / T), from max_lr / 25 down to max_lr / 25e4 at the last step; cosine shape;
      momentum is not cycled, so the lr is the only thing that changes.
    Build it before the first step: it sets the optimizer's lr for step 0. A LambdaLR ("cosine")
    saves no function in its state_dict; rebuilt with the same arguments, load_state_dict resumes it.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")
    total, warm = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    if min(epochs, steps_per_epoch) < 1 or not 0 <= warmup_epochs < epochs:
        raise ValueError(f"schedule: need epochs >= 1, steps_per_epoch >= 1 and 0 <= warmup_epochs < epochs, "
                         f"got {epochs}, {steps_per_epoch}, {warmup_epochs}")
    if name == "constant":
        return None
    if name == "onecycle":
        if warm == 0:
            raise ValueError("schedule 'onecycle' needs warmup_epochs >= 1 (its rise to max_lr)")
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=total, pct_start=warm / total,
                                                   anneal_strategy="cos", cycle_momentum=False)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / (total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


LOSS_NAMES = {"bce": "BCEWithLogitsLoss", "bce_dice": "BCEWithLogitsLoss + soft Dice",
              "bce_lovasz": "BCEWithLogitsLoss + Lovasz hinge"}  # as recorded in settings


def augment_settings(augment) -> dict | None:
    """The keyword arguments of :func:`augment_batch` that ``augment`` asks for: None for None/False/"off"
    (no augmentation), its defaults for True/"on", or the given dict over its defaults."""
    if augment is None or augment is False or augment == "off":
        return None
    defaults = {k: p.default for k, p in inspect.signature(augment_batch).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if augment is True or augment == "on":
        return defaults
    if isinstance(augment, dict):
        unknown = set(augment) - set(defaults)
        if unknown:
            raise ValueError(f"augment: unknown setting(s) {sorted(unknown)}; known: {sorted(defaults)}")
        return {**defaults, **augment}
    raise ValueError(f"augment must be None, False, True, 'on', 'off' or a dict, got {augment!r}")


# settings added after runs were recorded: left out of the description while off, so that the runs
# recorded before them (and compared on resume) describe the same augmentation
UNNAMED_WHEN_OFF = {"rotate": 0.0}


def describe_augment(kwargs: dict) -> str:
    """One line naming the augmentation settings, as recorded in a run's settings."""
    return ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in sorted(kwargs.items())
                     if not (k in UNNAMED_WHEN_OFF and v == UNNAMED_WHEN_OFF[k]))


class WeightAverage:
    """Exponential moving averages (EMA) of a model's weights and BatchNorm statistics, one per decay.

    After optimizer step t, the average of decay d moves towards the model's state by
    w_t = (1 - d) / (1 - d**t): the bias-corrected EMA of Adam, so the first step takes the model's
    state and the weights of step s < t count d**(t - s) (normalised), never the initial weights.
    Every floating-point entry of the state dict is averaged (BatchNorm's running statistics too);
    integer ones (num_batches_tracked) are copied. The averages live on the model's device; their
    state dict (decays, steps, averages on the CPU) resumes them exactly.
    """

    def __init__(self, model: nn.Module, decays):
        self.decays = tuple(float(d) for d in decays)
        if not self.decays or not all(0 < d < 1 for d in self.decays):
            raise ValueError(f"weight averaging: decays must be in (0, 1), got {list(decays)!r}")
        self.steps = 0
        self.averages = [{k: v.detach().clone() for k, v in model.state_dict().items()} for _ in self.decays]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current state into every average (call after each optimizer step)."""
        self.steps += 1
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.dtype.is_floating_point]
        for decay, average in zip(self.decays, self.averages):
            # one fused call per average (about 6 ms a step for Model 3 on one CPU thread)
            torch._foreach_lerp_([average[k] for k in floats], [state[k] for k in floats],
                                 (1 - decay) / (1 - decay ** self.steps))
            for k, v in state.items():
                if not v.dtype.is_floating_point:
                    average[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decays": list(self.decays), "steps": self.steps,
                "averages": [{k: v.detach().cpu().clone() for k, v in a.items()} for a in self.averages]}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["decays"]) != self.decays:
            raise ValueError(f"weight averaging: saved decays {state['decays']}, asked for {list(self.decays)}")
        self.steps = int(state["steps"])
        for average, saved in zip(self.averages, state["averages"]):
            for k, v in average.items():
                v.copy_(saved[k])
