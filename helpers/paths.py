"""Project paths, built from this package's location so every tool finds the same files."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
ISIC2016 = DATA / "isic2016"
SYNTHETIC = DATA / "synthetic"
CACHE = DATA / "cache"
FIGURES = ROOT / "figures"
RUNS = ROOT / "runs"
NOTEBOOKS = ROOT / "notebooks"
LAB = ROOT / "lab"  # JupyterLab working copies of the notebooks (helpers.tools.lab), ignored by git
