"""Reproduction of a MobileNetV2 skin-lesion segmentation report on ISIC 2016 Part 1.

Modules: paths, images (opening one image or mask file), folders (ISIC folders, validation),
cache (preprocessing cache, Datasets), data (its command line), synthetic (demo set), download
(official archives), model, metrics, train, plots, runlock (one run per run folder), reproduce.
"""

__version__ = "0.1.0"
