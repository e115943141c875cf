"""The preprocessing cache and the Datasets of an ISIC 2016 Part 1 folder.

Each sample is resized to ``image_size`` (image bilinear, mask nearest) and returned as float
tensors: image 3 x H x W in [0, 1], mask 1 x H x W in {0, 1}, plus the id and the original size
(height, width). Decoded splits are kept as uint8 tensors, on disk under ``cache_dir`` when given.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .folders import DataWarning, Sample, _warn_fixes, list_split, load_sample
from .images import DEFAULT_MAX_PIXELS, check_pixels
from .io import atomic_path
from .progress import progress_bar

CACHE_FORMAT = 2  # 2: the lesion pixels of each mask at the original size


def decode_split(samples: list[Sample], image_size: int, workers: int | None = None,
                 progress: bool = True, desc: str = "decode",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, torch.Tensor | list]:
    """Decode and resize every sample (threads: PIL releases the GIL while decoding).

    Returns ``images`` uint8 N x 3 x S x S, ``masks`` uint8 N x 1 x S x S (0/1), ``ids``, ``sizes``
    (original height, width) and ``lesion`` (lesion pixels of each mask at the original size).
    """
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(progress_bar(pool.map(lambda s: load_sample(s, image_size, max_pixels), samples),
                                    total=len(samples), desc=desc, unit="img", enabled=progress))
    _warn_fixes(str(samples[0].image.parent), results)
    images = torch.from_numpy(np.stack([r["image"] for r in results])).permute(0, 3, 1, 2).contiguous()
    out = {"images": images, "ids": [s.id for s in samples], "sizes": [r["size"] for r in results]}
    if samples[0].mask is not None:
        out["masks"] = torch.from_numpy(np.stack([r["mask"] for r in results]))[:, None].contiguous()
        out["lesion"] = [r["lesion"] for r in results]
    return out


def cache_key(samples: list[Sample], image_size: int) -> str:
    """Hash of the file list (names, byte sizes, modification times) and image_size."""
    h = hashlib.sha256(f"format={CACHE_FORMAT};size={image_size}".encode())
    for s in samples:
        for path in (s.image, s.mask):
            if path is not None:
                st = path.stat()
                h.update(f"|{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def load_cached(root, split: str, image_size: int = 128, cache_dir=None, workers: int | None = None,
                progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """:func:`decode_split` of a split, through a tensor file in ``cache_dir`` when given.

    The cache file is keyed by :func:`cache_key`; a valid one is reused, a stale or unreadable one
    is rebuilt (written atomically: two processes building it at once each write a temporary file of
    their own and rename it, so readers see a whole file or none). A reused cache still refuses an
    image of more than ``max_pixels`` pixels, from the original sizes it holds.
    """
    samples = list_split(root, split)
    if cache_dir is None:
        return decode_split(samples, image_size, workers, progress, desc=split, max_pixels=max_pixels)
    key = cache_key(samples, image_size)
    path = Path(cache_dir) / f"{split}-{image_size}px-{key[:16]}.pt"
    if path.is_file():
        try:
            data = torch.load(path, weights_only=True)
            valid = data.get("key") == key
        except Exception:  # a damaged cache is rebuilt, never trusted
            valid = False
        if valid:
            for sample, (height, width) in zip(samples, data["sizes"]):
                check_pixels(sample.image, (width, height), max_pixels)
            return data
        warnings.warn(f"{path}: stale or damaged cache, rebuilding", DataWarning, stacklevel=2)
    data = decode_split(samples, image_size, workers, progress, desc=f"cache {split}", max_pixels=max_pixels)
    data["key"] = key
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return data


class TensorSegmentation(Dataset):
    """Decoded split held in memory as uint8; items are float tensors.

    item ``ds[i]``: {"image": 3 x S x S float in [0, 1], "mask": 1 x S x S float in {0, 1},
                     "id": str, "size": int64 tensor (height, width) of the original image}
    batch ``ds[[i, j, ...]]``: the same items as default collation stacks them (B x 3 x S x S,
    B x 1 x S x S, list of B ids, B x 2), made with one gather and one float conversion.
    """

    def __init__(self, data: dict):
        self.images, self.masks = data["images"], data.get("masks")
        self.ids, self.sizes = list(data["ids"]), torch.tensor(data["sizes"], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i) -> dict:
        if isinstance(i, (int, np.integer)):
            item = {"image": self.images[i].float().div_(255), "id": self.ids[i], "size": self.sizes[i]}
            if self.masks is not None:
                item["mask"] = self.masks[i].float()
            return item
        i = torch.as_tensor(i, dtype=torch.int64)  # a batch; index_select is far faster than tensor[i] here
        item = {"image": self.images.index_select(0, i).float().div_(255), "id": [self.ids[j] for j in i.tolist()],
                "size": self.sizes.index_select(0, i)}
        if self.masks is not None:
            item["mask"] = self.masks.index_select(0, i).float()
        return item


class FileSegmentation(Dataset):
    """Opens, decodes and resizes the original files on every access (the report's approach)."""

    def __init__(self, root, split: str, image_size: int = 128, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.samples, self.image_size, self.max_pixels = list_split(root, split), image_size, max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        r = load_sample(self.samples[i], self.image_size, self.max_pixels)
        item = {"image": torch.from_numpy(r["image"]).permute(2, 0, 1).float().div_(255),
                "id": self.samples[i].id, "size": torch.tensor(r["size"])}
        if r["mask"] is not None:
            item["mask"] = torch.from_numpy(r["mask"])[None].float()
        return item


def load_dataset(root, split: str, image_size: int = 128, cache_dir=None, progress: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> TensorSegmentation:
    """The split as an in-memory Dataset (decoded once; cached on disk when cache_dir is given)."""
    return TensorSegmentation(load_cached(root, split, image_size, cache_dir, progress=progress, max_pixels=max_pixels))
