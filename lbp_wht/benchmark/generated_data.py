"""Small generated CIFAR-100 in its real on-disk format, for checks of the training pipeline
where the real data set cannot be had (no network on the GPU machine, none on CI).

:func:`write_cifar100` writes ``<root>/cifar-100-python/{train,test,meta}``: the pickled dicts
of the original archive (``data`` uint8 ``(N, 3072)`` in CHW order, ``fine_labels``,
``coarse_labels``, ``filenames``, ``batch_label``; ``meta`` with ``fine_label_names`` and
``coarse_label_names``), which mmpretrain's own ``CIFAR100`` loader reads. That loader also
checks the MD5 sums of the original files, which generated files cannot match;
:class:`GeneratedCIFAR100` (registered in mmpretrain's ``DATASETS`` when this module is
imported, e.g. through a config's ``custom_imports``) is the same loader with only that check
relaxed to "the files exist". Everything downstream (decoding, transforms, batching) is
mmpretrain's.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .. import integrations  # noqa: F401  (CPU shims before mmpretrain imports torchvision)

__all__ = ["write_cifar100", "GeneratedCIFAR100", "CIFAR100_FOLDER"]

CIFAR100_FOLDER = "cifar-100-python"


def write_cifar100(
    root: str | os.PathLike, n_train: int = 640, n_test: int = 100, seed: int = 0
) -> Path:
    """Write a CIFAR-100 look-alike of ``n_train`` / ``n_test`` random 32x32 RGB images (labels
    cycle through the 100 classes) under ``root``; returns ``root / "cifar-100-python"``.

    Raises:
        ValueError: a count below 1.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR100_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = [i % 100 for i in range(n)]
        entry = {
            "filenames": [f"generated_{split}_{i:05d}.png" for i in range(n)],
            "batch_label": f"generated {split} batch",
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    meta = {
        "fine_label_names": [f"class_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"superclass_{i:02d}" for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f)
    return folder


def _register() -> type | None:
    try:
        from mmpretrain.datasets import CIFAR100
        from mmpretrain.registry import DATASETS
    except ImportError:  # the writer works without mmpretrain; the dataset type needs it
        return None

    @DATASETS.register_module(force=True)
    class GeneratedCIFAR100(CIFAR100):
        """mmpretrain's ``CIFAR100`` without the MD5 check of the original archive's files
        (they must still exist); for data written by :func:`write_cifar100`."""

        def _check_integrity(self) -> bool:
            root = Path(self.data_prefix["root"]) / self.base_folder
            names = [n for n, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return all((root / n).is_file() for n in names)

        def _load_meta(self) -> None:
            path = Path(self.data_prefix["root"]) / self.base_folder / self.meta["filename"]
            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
            self._metainfo.setdefault("classes", data[self.meta["key"]])

    return GeneratedCIFAR100


GeneratedCIFAR100 = _register()
