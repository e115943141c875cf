"""The settings of one run (:class:`RunConfig`) and Model 3's named recipes.

A notebook's parameters cell holds the few settings its reader changes; everything else comes from a
settings file (``RunConfig.load``): the headless run writes the whole configuration to
``settings.json`` in its run folder and hands that path to every notebook, so that a run set up with
``make reproduce`` (TTA, external test sets, the image-size guard, ...) is the same run in each of them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import paths
from .errors import ProjectError
from .download import BASE_URL
from .evaluate import tta_mode
from .images import DEFAULT_MAX_PIXELS
from .io import write_json

SOURCES = ("auto", "isic2016", "synthetic")

# Model 3's named recipes (M3_RECIPE), each a whole table of settings; Models 1 and 2 keep the report's.
# "default" was chosen on a validation split of real ISIC 2016 training images; "strong" is the best
# measured there (docs/models.md): twice the epochs, the encoder's BatchNorm statistics frozen, deep
# supervision at weight 0.5, half the learning rate; it trains for about twice the time of "default".
# image_size None: the run's IMAGE_SIZE; the epochs are the run's EPOCHS times epochs_factor (or
# M3_EPOCHS); the learning rate is the run's LR times lr_factor.
M3_RECIPES = {
    "default": {"image_size": None, "epochs_factor": 1, "augment": True, "loss": "bce_dice", "schedule": "cosine",
                "select": "last", "encoder_bn": "train", "deep_supervision": 0.0, "lr_factor": 1.0},
    "strong": {"image_size": None, "epochs_factor": 2, "augment": True, "loss": "bce_dice", "schedule": "cosine",
               "select": "last", "encoder_bn": "frozen", "deep_supervision": 0.5, "lr_factor": 0.5},
}
# how notebook 04's recipe table names each setting
RECIPE_ROWS = {"image_size": "working size", "epochs": "epochs", "augment": "augmentation", "loss": "loss",
               "schedule": "learning-rate schedule", "select": "weights kept", "encoder_bn": "encoder BatchNorm",
               "deep_supervision": "deep supervision weight", "lr": "learning rate"}


class SettingsError(ProjectError):
    """A settings file that cannot be read or names a setting that does not exist."""


@dataclass(frozen=True)
class RunConfig:
    """Settings of one run; defaults are the report's."""

    data: str = "auto"              # "auto" (ISIC 2016 if present, else synthetic), "isic2016", "synthetic"
    data_dir: str | None = None     # folder of the data; None: data/isic2016 or data/synthetic
    synthetic_train: int = 240      # size of the synthetic set when it has to be generated
    synthetic_test: int = 100
    image_size: int = 128
    epochs: int = 25
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    seeds: int = 1                  # number of seeds (seed, seed + 1, ...); the comparison reports their spread
    device: str = "auto"
    encoder_weights: str | None = "auto"  # "imagenet", None, a path, or "auto" (ImageNet else random, loudly)
    run_dir: str = "runs/interactive"   # outputs (relative paths are under the project root)
    figures_dir: str = "figures"
    cache_dir: str | None = "data/cache"
    tta: bool | str = False         # also score with test-time augmentation, reported separately: True or
    #                                 "flips" (the image and its two flips), "dihedral" (its 8 rotations and flips)
    progress: bool = True
    val_fraction: float | None = None  # held out of the training ids; None: 0.2 without a test split, else 0
    split_seed: int = 0             # seed of the held-out ids (the same for every training seed)
    isic_url: str = BASE_URL        # where DATA="auto"/"isic2016" downloads ISIC 2016 from when absent
    m3_recipe: str = "default"      # Model 3's named recipe (M3_RECIPES)
    m3_epochs: int | None = None    # Model 3's epochs; None: the run's epochs times the recipe's factor
    m3_ensemble: bool = False       # also score Model 3's seeds as one ensemble (mean probability; needs seeds >= 2)
    max_pixels: int = DEFAULT_MAX_PIXELS  # image files of more pixels are refused (a decompression-bomb guard)
    external: str | None = None     # external test sets "DIR[,NAME=DIR...]" (helpers.external), scored after training

    def __post_init__(self):
        if self.data not in SOURCES:
            raise ValueError(f"data must be one of {SOURCES}, got {self.data!r}")
        for name in ("image_size", "epochs", "batch_size", "seeds", "m3_epochs", "max_pixels"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.m3_ensemble and self.seeds < 2:
            raise ValueError(f"m3_ensemble scores the seeds of Model 3 as one ensemble, so it needs seeds >= 2, "
                             f"got seeds={self.seeds}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1) or None, got {self.val_fraction!r}")
        try:
            tta_mode(self.tta)
        except ProjectError as exc:  # a bad setting, as for the others
            raise ValueError(str(exc)) from None
        v = self.lr
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise ValueError(f"lr is a learning rate, a finite number above 0, got {v!r}")
        if self.m3_recipe not in M3_RECIPES:
            raise ValueError(f"m3_recipe must be one of {tuple(M3_RECIPES)}, got {self.m3_recipe!r}")

    @classmethod
    def load(cls, settings: str | Path | None = None, **overrides) -> RunConfig:
        """The settings saved in the JSON file ``settings`` (a run folder's settings.json, or a file of
        one's own naming some of them), or the defaults when None; then ``overrides`` (a notebook's
        parameters). A file that cannot be read, or names a setting that does not exist, raises
        SettingsError naming the file."""
        saved = {}
        if settings is not None:
            path = under_root(settings)
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise SettingsError(f"{path}: cannot read the run settings ({exc.__class__.__name__}: "
                                    f"{' '.join(str(exc).split())})") from None
            if not isinstance(saved, dict):
                raise SettingsError(f"{path}: the run settings must be a JSON object of setting: value")
        known = {f.name for f in fields(cls)}
        for where, given in ((settings, saved), (None, overrides)):
            unknown = sorted(set(given) - known)
            if unknown:
                place = f"{under_root(where)}: " if where is not None else ""
                raise SettingsError(f"{place}unknown setting(s) {', '.join(unknown)}; the settings are "
                                    f"{', '.join(sorted(known))}")
        return cls(**{**saved, **overrides})

    def write(self, path: str | Path) -> Path:
        """Write every setting to the JSON file ``path`` (atomically), for :meth:`load`."""
        write_json(Path(path), asdict(self))
        return Path(path)

    @property
    def seed_list(self) -> list[int]:
        """The training seeds: seed, seed + 1, ..., ``seeds`` of them."""
        return list(range(self.seed, self.seed + self.seeds))

    @property
    def run_path(self) -> Path:
        return under_root(self.run_dir)

    def figure(self, name: str) -> Path:
        """Where figure ``name`` (e.g. fig03_model1_loss.png) goes."""
        return under_root(self.figures_dir) / name


def under_root(path: str | Path) -> Path:
    """``path``, relative paths taken from the project root (where every tool finds the same files)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else paths.ROOT / path


def model3_recipe(cfg: RunConfig) -> dict:
    """Model 3's training recipe for this run: its named recipe's settings (:data:`M3_RECIPES`), with the
    working size, the epochs and the learning rate worked out from the run's."""
    r = M3_RECIPES[cfg.m3_recipe]
    return {"preset": cfg.m3_recipe, "image_size": r["image_size"] or cfg.image_size,
            "epochs": cfg.m3_epochs or cfg.epochs * r["epochs_factor"], "augment": r["augment"], "loss": r["loss"],
            "schedule": r["schedule"], "select": r["select"], "encoder_bn": r["encoder_bn"],
            "deep_supervision": float(r["deep_supervision"]), "lr": cfg.lr * r["lr_factor"],
            "ensemble": cfg.m3_ensemble}


def recipe_table(cfg: RunConfig | None = None):
    """Model 3's named recipes side by side (pandas DataFrame, one row a setting): what each sets, in terms
    of the run's IMAGE_SIZE, EPOCHS and LR where it follows them; with ``cfg``, a last column with what
    this run's recipe works out to (:func:`model3_recipe`)."""
    import pandas as pd

    def written(r: dict) -> dict:
        return {"image_size": r["image_size"] or "IMAGE_SIZE",
                "epochs": "EPOCHS" if r["epochs_factor"] == 1 else f"EPOCHS x {r['epochs_factor']}",
                **{k: r[k] for k in ("augment", "loss", "schedule", "select", "encoder_bn", "deep_supervision")},
                "lr": "LR" if r["lr_factor"] == 1 else f"LR x {r['lr_factor']}"}

    table = pd.DataFrame({name: written(r) for name, r in M3_RECIPES.items()})
    if cfg is not None:
        mine = model3_recipe(cfg)
        table[f"this run ({cfg.m3_recipe})"] = [mine[k] for k in table.index]
    return table.rename(index=RECIPE_ROWS).rename_axis("setting")
