"""The tiny setting that nbval and the pipeline tests run the notebooks on, and the tool that
refreshes the committed outputs of the nbval-checked cells.

    python tests/nbtiny.py --update   # re-execute on the tiny setting, keep only checked outputs
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
# in numbered order, the order they run in: the comparison (05) reads what 02, 03 and 04 saved
NOTEBOOKS = [ROOT / "notebooks" / name for name in ("01_data_exploration.ipynb", "02_model1_frozen_encoder.ipynb",
                                                    "03_model2_finetuned.ipynb", "04_model3_unet_decoder.ipynb",
                                                    "05_comparison.ipynb")]
CHECK = "# NBVAL_CHECK_OUTPUT"


def tiny_parameters(tmp: Path) -> dict:
    """A synthetic set of 16 + 8 images at 64x64, 1 epoch, random encoder: seconds per notebook."""
    return {"DATA": "synthetic", "DATA_DIR": str(tmp / "synthetic"), "SYNTHETIC_TRAIN": 16,
            "SYNTHETIC_TEST": 8, "IMAGE_SIZE": 64, "EPOCHS": 1, "BATCH_SIZE": 8, "LR": 0.001, "SEED": 0, "SEEDS": 1,
            "DEVICE": "cpu", "ENCODER_WEIGHTS": None, "MAX_PIXELS": 100_000_000, "RUN_DIR": str(tmp / "runs" / "tiny"),
            "FIGURES_DIR": str(tmp / "figures"), "CACHE_DIR": str(tmp / "cache"), "TTA": False, "PROGRESS": False,
            "EXTERNAL": None, "M3_RECIPE": "default", "M3_EPOCHS": None}


def tiny_settings(tmp: Path, **changes) -> Path:
    """tmp/settings.json: the whole tiny configuration (with ``changes``, lower-case setting names), as the
    headless run writes it for its notebooks (their SETTINGS)."""
    from helpers.settings import RunConfig

    known = set(RunConfig.__dataclass_fields__)
    values = {k.lower(): v for k, v in tiny_parameters(tmp).items() if k.lower() in known}
    return RunConfig(**{**values, **changes}).write(tmp / "settings.json")


def tiny_injection(tmp: Path, notebook: Path, **changes) -> dict:
    """What the headless run passes ``notebook`` on the tiny setting: SETTINGS (tiny_settings) and the
    tiny values of the other parameters its parameters cell declares."""
    import papermill as pm

    values = {**tiny_parameters(tmp), "SETTINGS": str(tiny_settings(tmp, **changes))}
    return {k: values[k] for k in pm.inspect_notebook(str(notebook))}


def parameterized_copies(tmp: Path) -> list[Path]:
    """Copies of the notebooks with the tiny parameters injected (papermill's own injection)."""
    import papermill as pm

    out_dir = tmp / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in NOTEBOOKS:
        pm.execute_notebook(str(src), str(out_dir / src.name), parameters=tiny_injection(tmp, src),
                            prepare_only=True, kernel_name="python3", progress_bar=False)
    return [out_dir / src.name for src in NOTEBOOKS]


def figure_names(path: Path) -> set[str]:
    """The figure files a notebook saves (fig01_... .png), from its source."""
    import re

    return set(re.findall(r"fig\d\d_\w+\.png", path.read_text()))


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.startswith(CHECK)


def update(tmp: Path) -> None:
    """Execute the tiny copies and write back only the outputs of the checked cells."""
    import papermill as pm

    for copy, src in zip(parameterized_copies(tmp), NOTEBOOKS):
        executed = pm.execute_notebook(str(copy), str(copy), kernel_name="python3", progress_bar=False)
        done = {c.id: c for c in executed.cells if is_checked(c)}
        nb = nbformat.read(src, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                ref = done.get(cell.id) if is_checked(cell) else None
                cell.outputs = ref.outputs if ref else []
                cell.execution_count = ref.execution_count if ref else None  # nbval skips unrun cells
                cell.metadata.pop("execution", None)
        nbformat.write(nb, src)
        print(f"updated {src.relative_to(ROOT)}")


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as d:
        update(Path(d))
