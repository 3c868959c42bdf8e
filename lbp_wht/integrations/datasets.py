"""Datasets for the paper's experiments, dataset-path checks, and small generated datasets.

The paper's datasets come from mmpretrain (CIFAR10/100, StanfordCars, Flowers102, Food101,
OxfordIIITPet) and mmseg (Cityscapes, PascalVOC); mmpretrain 1.2 has no Places365, so
:class:`Places365` is added here. :func:`check_dataloader_paths` runs before any dataloader is
built and raises ONE :class:`DatasetNotFoundError` naming every missing path and how to get it.
"""

from __future__ import annotations

import gzip
import os
import os.path as osp
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from mmengine.fileio import list_from_file
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmpretrain.datasets import BaseDataset as ClsBaseDataset
from mmpretrain.datasets import FashionMNIST
from mmpretrain.registry import DATASETS as CLS_DATASETS

from lbp_wht.io import atomic_write

__all__ = [
    "DatasetFileError",
    "DatasetNotFoundError",
    "MissingInputsError",
    "DATASET_HINTS",
    "dataset_problems",
    "GzFashionMNIST",
    "ClassSubsetDataset",
    "Places365",
    "check_dataloader_paths",
    "check_labels",
    "idx_file",
    "missing_dataset_paths",
    "write_idx_classification",
    "write_seg_folder",
]


class MissingInputsError(FileNotFoundError):
    """Files a run needs (datasets, checkpoints) are missing; the message lists all of them."""


class DatasetNotFoundError(MissingInputsError):
    """A dataset the config needs is not where the config says."""


class DatasetFileError(ValueError):
    """A dataset file exists but cannot be read (truncated, corrupt, wrong format)."""


# type -> (paths under data_root that must exist (each entry: alternatives), how to obtain it)
DATASET_HINTS: dict[str, tuple[list[tuple[str, ...]], str]] = {
    "CIFAR10": (
        [("cifar-10-batches-py/data_batch_1",)],
        "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it in "
        "data_root (gives cifar-10-batches-py/)",
    ),
    "CIFAR100": (
        [("cifar-100-python/train",)],
        "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it in "
        "data_root (gives cifar-100-python/)",
    ),
    "StanfordCars": (
        [("cars_annos.mat", "devkit/cars_train_annos.mat")],
        "Stanford Cars (car_ims/ + cars_annos.mat, or cars_train/ cars_test/ devkit/); see "
        "https://mmpretrain.readthedocs.io/en/latest/api/datasets.html#stanfordcars",
    ),
    "Flowers102": (
        [("imagelabels.mat",), ("setid.mat",), ("jpg",)],
        "download 102flowers.tgz, imagelabels.mat and setid.mat from "
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into data_root",
    ),
    "Food101": (
        [("meta/train.txt",), ("images",)],
        "download food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/"
        "food-101/ and extract it (data_root is the food-101/ folder)",
    ),
    "OxfordIIITPet": (
        [("annotations/trainval.txt",), ("images",)],
        "download images.tar.gz and annotations.tar.gz from "
        "https://www.robots.ox.ac.uk/~vgg/data/pets/ and extract both in data_root",
    ),
    "Places365": (
        [("places365_train_standard.txt",), ("places365_val.txt",)],
        "Places365-Standard, small images (256x256) from http://places2.csail.mit.edu/"
        "download.html: filelist_places365-standard.tar, train_256_places365standard.tar "
        "(data_256/), val_256.tar (val_256/), extracted in data_root",
    ),
    "GzFashionMNIST": (
        [
            ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"),
            ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"),
        ],
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs "
        "/usr/share/datasets/fashion-mnist) or download the four *-ubyte.gz files from "
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
    "CityscapesDataset": (
        [("leftImg8bit",), ("gtFine",)],
        "register at https://www.cityscapes-dataset.com/, download leftImg8bit_trainvaltest.zip "
        "and gtFine_trainvaltest.zip, extract in data_root and run mmseg's "
        "tools/dataset_converters/cityscapes.py data_root --nproc 8 (makes *_labelTrainIds.png)",
    ),
    "PascalVOCDataset": (
        [("JPEGImages",), ("ImageSets/Segmentation",)],
        "VOC2012 (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) plus the SBD augmented set, "
        "converted with mmseg's tools/dataset_converters/voc_aug.py (makes SegmentationClassAug "
        "and ImageSets/Segmentation/aug.txt)",
    ),
}


def _dataset_cfgs(cfg: Any) -> Iterable[Mapping[str, Any]]:
    """Leaf dataset configs inside a dataloader / dataset config (walks wrappers)."""
    if cfg is None or not isinstance(cfg, Mapping):
        return
    if "dataset" in cfg and isinstance(cfg["dataset"], Mapping):
        yield from _dataset_cfgs(cfg["dataset"])
    if "datasets" in cfg and isinstance(cfg["datasets"], (list, tuple)):
        for d in cfg["datasets"]:
            yield from _dataset_cfgs(d)
    if "data_root" in cfg:
        yield cfg


def missing_dataset_paths(dataset_cfg: Mapping[str, Any]) -> list[str]:
    """Paths a (leaf) dataset config needs that do not exist."""
    root = dataset_cfg.get("data_root") or ""
    if not root or "://" in str(root):
        return []  # remote backends: nothing to check locally
    if not osp.isdir(root):
        return [str(root)]
    required = list(DATASET_HINTS.get(str(dataset_cfg.get("type")), ([], ""))[0])
    prefix, ann = dataset_cfg.get("data_prefix"), dataset_cfg.get("ann_file")
    required += [(v,) for v in prefix.values()] if isinstance(prefix, Mapping) else []
    required += [(a,) for a in ([ann] if isinstance(ann, str) else list(ann or []))]
    missing = [
        " or ".join(osp.join(root, a) for a in alts)
        for alts in required
        if all(isinstance(a, str) and a for a in alts)
        and not any(osp.exists(osp.join(root, a)) for a in alts)
    ]
    return list(dict.fromkeys(missing))


def dataset_problems(dataloaders: Mapping[str, Any]) -> list[str]:
    """One paragraph per missing dataset (what, where, how to get it); empty if none.
    ``dataloaders``: name -> dataloader config (dict) or already built DataLoader (skipped)."""
    problems = []
    for name, dl in dataloaders.items():
        for ds in _dataset_cfgs(dl):
            miss = missing_dataset_paths(ds)
            if miss:
                kind = str(ds.get("type"))
                hint = DATASET_HINTS.get(kind, ([], "see the dataset's documentation"))[1]
                problems.append(
                    f"  {name}: {kind} at data_root={ds.get('data_root')!r} is missing "
                    f"{', '.join(miss)}\n    how to get it: {hint}"
                )
    return list(dict.fromkeys(problems))


#: What to do about missing datasets (the last line of the error).
DATASET_HELP = (
    "See data/README.md for where each dataset goes; point the config at another location with "
    "e.g. --cfg-options train_dataloader.dataset.data_root=PATH (and the same for val/test)."
)


def check_labels(labels: Any, num_classes: int, where: str) -> None:
    """Refuse labels outside ``0 .. num_classes - 1`` (they would silently drop out of a class
    subset, or fail deep inside the loss), naming the first such label and the class count."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DatasetFileError(
            f"{where}: label {int(bad[0])} is outside the dataset's {num_classes} classes "
            f"(0..{num_classes - 1}); {bad.size} of {labels.size} samples have such labels. "
            "The label file and the class list do not match."
        )


def check_dataloader_paths(dataloaders: Mapping[str, Any]) -> None:
    """Raise one :class:`DatasetNotFoundError` for all missing dataset paths (arguments as
    :func:`dataset_problems`)."""
    problems = dataset_problems(dataloaders)
    if problems:
        raise DatasetNotFoundError(
            "dataset not found:\n" + "\n".join(problems) + "\n" + DATASET_HELP
        )


def idx_file(root: str | os.PathLike, name: str) -> str | None:
    """``root/name`` (an idx file, ``name`` without ``.gz``) or its gzipped copy; None if neither."""
    for cand in (name, name + ".gz"):
        if osp.exists(osp.join(root, cand)):
            return osp.join(root, cand)
    return None


def _read_idx(path: str, ndim: int) -> np.ndarray:
    """A uint8 idx array (LeCun's MNIST format: magic 0x0000 08 <ndim>, big-endian int32 sizes,
    then the data) from ``path``, gunzipping ``*.gz`` on the fly.

    Raises:
        DatasetFileError: naming ``path``: truncated / corrupt gzip, wrong header, wrong size.
    """
    hint = f"Re-install or re-download it ({DATASET_HINTS['GzFashionMNIST'][1]})."
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DatasetFileError(
            f"dataset file {path} cannot be read ({type(err).__name__}: {err or 'ends early'}): "
            f"it is truncated or corrupt. {hint}"
        ) from None
    if len(data) < 4 + 4 * ndim:
        raise DatasetFileError(f"dataset file {path} is truncated ({len(data)} bytes). {hint}")
    zero, dtype, nd = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or nd != ndim:
        raise DatasetFileError(
            f"dataset file {path} is not a {ndim}-d uint8 idx file (header {data[:4].hex()}). "
            + hint
        )
    shape = struct.unpack(f">{nd}I", data[4 : 4 + 4 * nd])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd)
    if arr.size != int(np.prod(shape)):
        raise DatasetFileError(
            f"dataset file {path} holds {arr.size} values, its header says {shape} "
            f"({int(np.prod(shape))}): it is truncated or corrupt. {hint}"
        )
    return arr.reshape(shape).copy()


@CLS_DATASETS.register_module()
class GzFashionMNIST(FashionMNIST):
    """mmpretrain ``FashionMNIST`` reading the idx files of ``data_root``
    (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, gzipped as e.g. Debian's
    ``dataset-fashion-mnist`` ships them); never downloads. ``split`` (``"train"`` / ``"test"``)
    selects the files (mmpretrain's ``MNIST`` reads the training files for ``split='test'``
    unless ``test_mode=True`` is also given). Used by the mini (CPU) configs."""

    def __init__(self, data_root: str = "", split: str = "train", **kwargs: Any) -> None:
        kwargs["download"] = False
        super().__init__(data_root=data_root, split=split, **kwargs)

    def _find(self, name: str) -> str | None:
        return idx_file(self.data_prefix["root"], name.removesuffix(".gz"))

    def _check_exists(self) -> bool:
        return all(self._find(f) for f, _ in self.train_list + self.test_list)

    def load_data_list(self) -> list[dict]:
        if not self._check_exists():
            raise DatasetNotFoundError(
                f"{type(self).__name__}: idx files not found in {self.data_prefix['root']}; "
                + DATASET_HINTS["GzFashionMNIST"][1]
            )
        # By split, not test_mode: mmpretrain 1.2's MNIST picks the files by test_mode, so its
        # split='test' without test_mode=True silently reads the *training* files.
        files = self.test_list if self.split == "test" else self.train_list
        imgs = _read_idx(self._find(files[0][0]), ndim=3)
        labels = _read_idx(self._find(files[1][0]), ndim=1)
        if len(imgs) != len(labels):
            raise ValueError(f"{len(imgs)} images but {len(labels)} labels in {self.data_prefix}")
        check_labels(labels, len(self.metainfo["classes"]), self._find(files[1][0]))
        return [
            {"img": img, "gt_label": np.array(int(label), dtype=np.int64)}
            for img, label in zip(imgs, labels)
        ]


@CLS_DATASETS.register_module()
class Places365(ClsBaseDataset):
    """Places365-Standard (Zhou et al., TPAMI 2018), 365 scene classes; Table 7.

    Layout (the official "small images 256x256" archives)::

        data_root/
          categories_places365.txt        "/a/airfield 0" per line (optional)
          places365_train_standard.txt    "/a/airfield/00000001.jpg 0"
          places365_val.txt               "Places365_val_00000001.jpg 165"
          data_256/                       training images (paths as in the train list)
          val_256/                        validation images

    Args:
        data_root: the folder above.
        split: ``"train"`` or ``"val"`` (the paper evaluates on the 36,500 val images).
    """

    SPLITS = {
        "train": ("places365_train_standard.txt", "data_256"),
        "val": ("places365_val.txt", "val_256"),
    }

    def __init__(self, data_root: str, split: str = "train", **kwargs: Any) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"Places365 split must be one of {list(self.SPLITS)}, got {split!r}")
        self.split = split
        ann_file, prefix = self.SPLITS[split]
        metainfo = kwargs.pop("metainfo", None)
        if metainfo is None:
            metainfo = {"classes": self._read_categories(data_root)}
        super().__init__(
            ann_file=ann_file,
            data_root=data_root,
            data_prefix=prefix,
            test_mode=split != "train",
            metainfo=metainfo,
            **kwargs,
        )

    @staticmethod
    def _read_categories(data_root: str) -> tuple[str, ...]:
        path = osp.join(data_root, "categories_places365.txt")
        if not osp.exists(path):
            return tuple(f"class_{i}" for i in range(365))
        names: dict[int, str] = {}
        for line in filter(str.strip, list_from_file(path)):
            name, idx = line.rsplit(maxsplit=1)
            names[int(idx)] = name.strip("/").split("/", 1)[-1]
        return tuple(names[i] for i in sorted(names))

    def load_data_list(self) -> list[dict]:
        out = []
        for line in filter(str.strip, list_from_file(self.ann_file)):
            rel, label = line.rsplit(maxsplit=1)
            out.append(
                {"img_path": osp.join(self.img_prefix, rel.lstrip("/")), "gt_label": int(label)}
            )
        check_labels([d["gt_label"] for d in out], len(self.metainfo["classes"]), self.ann_file)
        return out


@MMENGINE_DATASETS.register_module()
class ClassSubsetDataset:
    """Keep some classes of a classification dataset, relabelled ``0..K-1``, capped per class.

    Args:
        dataset: config (or instance) of an mmpretrain classification dataset; its pipeline
            runs on the relabelled samples.
        classes: original class ids (int) or names (str) to keep; their order defines the new
            labels. ``None`` keeps all classes.
        max_per_class: keep at most this many samples per class (a seeded random choice, the
            same on every rank), ``None`` for all.
        seed: seed of that choice.

    Example (the CPU demo's target task: Fashion-MNIST classes 5-9, 200 images each)::

        dict(type='ClassSubsetDataset', classes=[5, 6, 7, 8, 9], max_per_class=200,
             dataset=dict(type='GzFashionMNIST', data_root=..., split='train', pipeline=...))
    """

    def __init__(
        self,
        dataset: Any,
        classes: Sequence[int | str] | None = None,
        max_per_class: int | None = None,
        seed: int = 0,
    ) -> None:
        ds = CLS_DATASETS.build(dataset) if isinstance(dataset, Mapping) else dataset
        self.dataset, self.max_per_class, self.seed = ds, max_per_class, seed
        if hasattr(ds, "full_init"):
            ds.full_init()
        names = list(ds.metainfo.get("classes", []))
        if classes is None:
            keep = list(range(len(names)))
        else:
            keep = []
            for c in classes:
                if isinstance(c, str):
                    if c not in names:
                        raise ValueError(f"ClassSubsetDataset: class {c!r} not in {names}")
                    c = names.index(c)
                if not 0 <= int(c) < len(names):
                    raise ValueError(f"ClassSubsetDataset: class id {c} outside 0..{len(names)}")
                keep.append(int(c))
        if len(set(keep)) != len(keep):
            raise ValueError(f"ClassSubsetDataset: classes listed twice in {keep}")
        labels = np.asarray([int(ds.get_data_info(i)["gt_label"]) for i in range(len(ds))])
        if names:
            check_labels(labels, len(names), f"ClassSubsetDataset of {type(ds).__name__}")
        rng = np.random.default_rng(seed)
        indices: list[int] = []
        for c in keep:
            idx = np.flatnonzero(labels == c)
            if max_per_class is not None and len(idx) > max_per_class:
                idx = np.sort(rng.choice(idx, max_per_class, replace=False))
            indices.extend(int(i) for i in idx)
        self.indices = sorted(indices)
        self.label_map = {old: new for new, old in enumerate(keep)}
        self.metainfo = {**dict(ds.metainfo), "classes": tuple(names[c] for c in keep)}
        self.pipeline = ds.pipeline

    def full_init(self) -> None:
        """Nothing left to do: ``__init__`` loads the wrapped dataset (mmengine calls this)."""

    def __len__(self) -> int:
        return len(self.indices)

    def get_data_info(self, idx: int) -> dict:
        info = self.dataset.get_data_info(self.indices[idx])
        info["gt_label"] = np.array(self.label_map[int(info["gt_label"])], dtype=np.int64)
        return info

    def get_gt_labels(self) -> np.ndarray:
        return np.asarray([self.get_data_info(i)["gt_label"] for i in range(len(self))])

    def __getitem__(self, idx: int) -> Any:
        return self.pipeline(self.get_data_info(idx))

    def __repr__(self) -> str:
        return (
            f"ClassSubsetDataset({type(self.dataset).__name__}, classes={self.metainfo['classes']},"
            f" n={len(self)})"
        )


# ---------------------------------------------------------------------------------------------
# generated data in the real formats
# ---------------------------------------------------------------------------------------------
def _class_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``(N, size, size)`` images whose class is visible: class k draws a bar at a
    class-specific place (rows for even k, columns for odd k)."""
    imgs = rng.integers(0, 60, size=(len(labels), size, size), dtype=np.int64)
    band = max(size // 10, 1)
    for img, k in zip(imgs, labels.astype(int)):
        pos = (k * 3 * band) % max(size - band, 1)
        (img if k % 2 == 0 else img.T)[pos : pos + band * 2] += 150
    return np.clip(imgs, 0, 255).astype(np.uint8)


def write_idx_classification(
    root: str | os.PathLike,
    n_train: int = 64,
    n_test: int = 32,
    num_classes: int = 10,
    size: int = 28,
    seed: int = 0,
    gz: bool = True,
) -> str:
    """Write a small MNIST / Fashion-MNIST-format dataset (idx3 images, idx1 labels) to ``root``.

    Images are ``size x size`` uint8 with a class-dependent bar (learnable in a few steps).
    Returns ``root``.
    """
    root = str(root)
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % num_classes).astype(np.uint8)
        rng.shuffle(labels)
        imgs = _class_images(labels, size, rng)
        img_bytes = struct.pack(">IIII", 2051, n, size, size) + imgs.tobytes()
        lab_bytes = struct.pack(">II", 2049, n) + labels.tobytes()
        for name, data in (
            (f"{split}-images-idx3-ubyte", img_bytes),
            (f"{split}-labels-idx1-ubyte", lab_bytes),
        ):
            path = osp.join(root, name + (".gz" if gz else ""))
            atomic_write(path, gzip.compress(data) if gz else data)
    return root


def write_seg_folder(
    root: str | os.PathLike,
    n_train: int = 4,
    n_val: int = 2,
    size: int = 128,
    num_classes: int = 4,
    seed: int = 0,
) -> str:
    """Write a small segmentation dataset in mmseg's generic folder layout.

    ``root/img_dir/{train,val}/k.png`` (RGB) and ``root/ann_dir/{train,val}/k.png`` (uint8
    class ids; each image has rectangles of classes 1..K-1 on class 0, brighter per class, so
    the mapping is learnable). Read it with mmseg's ``BaseSegDataset`` (``img_suffix='.png'``).
    Returns ``root``.
    """
    import cv2

    root = str(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        os.makedirs(osp.join(root, "img_dir", split), exist_ok=True)
        os.makedirs(osp.join(root, "ann_dir", split), exist_ok=True)
        for k in range(n):
            ann = np.zeros((size, size), np.uint8)
            for c in range(1, num_classes):
                h, w = rng.integers(size // 6, size // 2, size=2)
                y, x = rng.integers(0, size - h), rng.integers(0, size - w)
                ann[y : y + h, x : x + w] = c
            img = rng.integers(0, 40, size=(size, size, 3)).astype(np.int64)
            img += ann[..., None].astype(np.int64) * (200 // max(num_classes - 1, 1))
            for folder, arr in (
                ("img_dir", np.clip(img, 0, 255).astype(np.uint8)),
                ("ann_dir", ann),
            ):
                atomic_write(
                    osp.join(root, folder, split, f"{k}.png"),
                    cv2.imencode(".png", arr)[1].tobytes(),
                )
    return root
