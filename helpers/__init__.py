"""Reproduction of a MobileNetV2 skin-lesion segmentation report on ISIC 2016 Part 1.

Modules: paths, folders (ISIC folders, validation), cache (preprocessing cache, Datasets),
data (its command line), synthetic (demo set), download (official archives), model, metrics,
train, plots, reproduce.
"""

__version__ = "0.1.0"
