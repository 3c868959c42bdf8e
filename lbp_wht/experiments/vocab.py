"""The experiment vocabulary: every name an experiment, a config, a run record or a table uses.

Standard library only (the sweep and the table builders import it without torch). One home for:

* **methods** and **models** -- re-exported from :mod:`lbp_wht.experiments.methods` and
  :mod:`lbp_wht.experiments.models` (one spec per method / model; the few views here are
  for ``lbp_wht/reporting``); row labels (:func:`method_label`: ``Full BP``, ``LP_L1-4``,
  ``LHE``, ``LP_L1-4 + LoRA-all``, ...);
* **selections** of WHT bases (:data:`SELECTIONS`: LP_L1 = Eq. 8, LP_Linf = Eq. 9, LHE) and
  the number of bases R a selection keeps (:func:`num_bases`);
* **scopes** (:data:`SCOPES`: ``partial`` = last stage + task head, ``full`` = whole model);
* **datasets** (:data:`DATASETS`: the paper's short names as in ``results/paper/*.csv``
  columns, the names configs and run records use, aliases, :func:`norm_dataset`);
* **tags**: a method row's normalised identity (:func:`method_key`), its tag in run ids
  (:func:`method_tag`, e.g. ``lbp_wht-lp_l1-4``) and in config file names
  (:func:`config_tag`, e.g. ``lp-l1-r4``; :func:`parse_config_tag` reads it back), and the
  config file name of a row (:func:`config_name`).

A *method key* is ``(method, select, r)``: ``select`` and ``r`` are None for methods without
WHT bases (Full BP, LoRA, LoRA-all, head only); for LHE ``r`` holds the rank R itself. Two
rows with the same key are the same experiment, whatever else their CSV or record says.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .methods import (
    DEFAULT_LORA_RANK,
    DEFAULT_LOSA_RANK,
    METHOD_SPECS,
    SCOPES,
    MethodSpec,
    method_spec,
    method_with,
)
from .models import MODEL_SPECS, ModelSpec, model_spec

__all__ = [
    # methods
    "MethodSpec",
    "METHOD_SPECS",
    "method_spec",
    "method_with",
    "METHOD_ORDER",
    "PAPER_METHODS",
    "BASE_LABELS",
    "LORA_TRAIN",
    "DEFAULT_LORA_RANK",
    "DEFAULT_LOSA_RANK",
    # selections
    "SELECTIONS",
    "SELECTION_LABELS",
    "DEFAULT_ORDER",
    "DEFAULT_SELECTION",
    "num_bases",
    # scopes
    "SCOPES",
    "SCOPE_LABELS",
    # models
    "ModelSpec",
    "MODEL_SPECS",
    "model_spec",
    "MODEL_NAMES",
    "PAPER_MODELS",
    "MODEL_ORDER",
    "short_model_name",
    # datasets
    "DatasetInfo",
    "DATASETS",
    "CLS_DATASETS",
    "SEG_DATASETS",
    "PAPER_TO_CONFIG_DATASET",
    "CONFIG_TO_PAPER_DATASET",
    "DATASET_ALIASES",
    "DATASET_HEADERS",
    "norm_dataset",
    "config_dataset",
    # tags
    "MethodKey",
    "method_key",
    "method_sort_key",
    "method_tag",
    "method_label",
    "rank_of",
    "lbp_options",
    "config_tag",
    "parse_config_tag",
    "config_name",
    "parse_config_name",
]

# ------------------------------------------------------------------------------------ methods
# Views of METHOD_SPECS that lbp_wht/reporting reads (elsewhere: read the specs).
METHOD_ORDER: tuple[str, ...] = tuple(METHOD_SPECS)
PAPER_METHODS: tuple[str, ...] = tuple(m.id for m in METHOD_SPECS.values() if m.paper)
#: Row labels of the methods without WHT bases.
BASE_LABELS: dict[str, str] = {m.id: m.label for m in METHOD_SPECS.values() if not m.has_bases}
#: What trains beside the adapters in the LoRA variants: ``adapters`` (the task head only,
#: LoRA's definition) or ``scope`` (every parameter of the trained scope except the LoRA
#: layers' frozen base weights, the freeze of the authors' configs).
LORA_TRAIN: tuple[str, ...] = ("adapters", "scope")

# --------------------------------------------------------------------------------- selections
#: WHT base selections (Sec. 3.2): ``lp_l1`` keeps bases (i, j) with i + j < r (Eq. 8),
#: ``lp_linf`` those with max(i, j) < r (Eq. 9), ``lhe`` the R bases with the most g_y energy
#: (measured over the first iterations of training).
SELECTIONS: tuple[str, ...] = ("lp_l1", "lp_linf", "lhe")
SELECTION_LABELS: dict[str, str] = {"lp_l1": "LP_L1", "lp_linf": "LP_Linf", "lhe": "LHE"}
_SELECTION_LATEX = {"lp_l1": "LP$_{L_1}$", "lp_linf": "LP$_{L_\\infty}$", "lhe": "LHE"}
#: The harness's copies of the core defaults (this module imports no torch, so it cannot read
#: ``lbp_wht.config``; ``tests/test_param_path.py`` checks they equal the core's): the base
#: selection of a row that names none (``LBPConfig.selection``) and the WHT order n (patch
#: side) of every experiment, 8x8 patches, 64 bases (``LBPConfig.order``).
DEFAULT_SELECTION = "lp_l1"
DEFAULT_ORDER = 8


def num_bases(select: str, r: int, order: int = DEFAULT_ORDER) -> int:
    """R, the number of WHT bases a selection keeps out of ``order**2``.

    ``lp_l1``: ``|{(i, j): i + j < r, 0 <= i, j < order}|`` (r = 2, 4, 6, 8 give R = 3, 10,
    21, 36; r >= 2 * order - 1 keeps all). ``lp_linf``: ``min(r, order)**2``. ``lhe``: ``r``
    is R itself. Same numbers as :func:`lbp_wht.bases.select_bases` (which a test checks).
    """
    r = int(r)
    if r < 1:
        raise ValueError(f"num_bases({select!r}, r={r}): r must be at least 1")
    if select == "lp_l1":
        return sum(min(d + 1, order, 2 * order - 1 - d) for d in range(min(r, 2 * order - 1)))
    if select == "lp_linf":
        return min(r, order) ** 2
    if select == "lhe":
        return r
    raise ValueError(f"unknown base selection {select!r}; choose one of {list(SELECTIONS)}")


# ------------------------------------------------------------------------------------- scopes
# SCOPES (``partial`` / ``full``) is defined beside the methods, which name the scopes they
# allow (lbp_wht/experiments/methods.py).
SCOPE_LABELS: dict[str, str] = {"partial": "partial training", "full": "full training"}


# ------------------------------------------------------------------------------------- models
# Views of MODEL_SPECS that lbp_wht/reporting reads (elsewhere: read the specs).
MODEL_ORDER: tuple[str, ...] = tuple(MODEL_SPECS)
PAPER_MODELS: tuple[str, ...] = tuple(m.id for m in MODEL_SPECS.values() if m.paper)
#: Table labels: ``EfficientFormer-L1 (Hybrid)``, ``Segformer-mit-b0``.
MODEL_NAMES: dict[str, str] = {m.id: m.label for m in MODEL_SPECS.values()}


def short_model_name(model: str) -> str:
    """The display name without the family tag (``EfficientFormer-L1``); unknown ids as they are."""
    spec = MODEL_SPECS.get(model)
    return model if spec is None else spec.name


# ----------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetInfo:
    """A dataset under both of its names.

    Attributes:
        id: the paper's short name, as ``results/paper/*.csv`` columns and run ids use it
            (``cars``).
        config: the name of its config base and of ``dataset_name`` in run records
            (``stanford-cars``).
        name: full name.
        task: ``"cls"`` or ``"seg"``.
        num_classes: classes of the task head.
        header: table column header (``CF100``).
        paper: used in the paper's tables (False: CPU mini data).
    """

    id: str
    config: str
    name: str
    task: str
    num_classes: int
    header: str
    paper: bool = True


#: Every dataset, keyed by the paper's short name, in table column order.
DATASETS: dict[str, DatasetInfo] = {
    d.id: d
    for d in (
        DatasetInfo("cifar100", "cifar100", "CIFAR-100", "cls", 100, "CF100"),
        DatasetInfo("cifar10", "cifar10", "CIFAR-10", "cls", 10, "CF10"),
        DatasetInfo("cars", "stanford-cars", "Stanford Cars", "cls", 196, "Cars"),
        DatasetInfo("flowers", "flowers102", "Oxford Flowers102", "cls", 102, "Flowers"),
        DatasetInfo("food", "food101", "Food-101", "cls", 101, "Food"),
        DatasetInfo("pets", "oxford-pets", "Oxford-IIIT Pets", "cls", 37, "Pets"),
        DatasetInfo("places365", "places365", "Places365-Standard", "cls", 365, "Accuracy"),
        DatasetInfo("cityscapes", "cityscapes", "Cityscapes", "seg", 19, "City"),
        DatasetInfo("voc12aug", "voc12aug", "Pascal VOC 2012 + SBD", "seg", 21, "VOC12A"),
        DatasetInfo("fashion-mnist", "fashion-mnist", "Fashion-MNIST", "cls", 10, "FMNIST", False),
        # The CPU mini-reproduction's two tasks (configs/mini/demo): pretraining on classes
        # 0-4, adaptation to classes 5-9.
        DatasetInfo(
            "fmnist-0to4", "fmnist-0to4", "Fashion-MNIST 0-4", "cls", 5, "FMNIST 0-4", False
        ),
        DatasetInfo(
            "fmnist-5to9", "fmnist-5to9", "Fashion-MNIST 5-9", "cls", 5, "FMNIST 5-9", False
        ),
        DatasetInfo(
            "mini-seg", "mini-seg", "generated 128x128 segmentation", "seg", 4, "mIoU", False
        ),
    )
}
#: The classification datasets of Tables 2 and 5, in column order.
CLS_DATASETS: tuple[str, ...] = ("cifar100", "cifar10", "cars", "flowers", "food", "pets")
#: The segmentation datasets of Table 3.
SEG_DATASETS: tuple[str, ...] = ("cityscapes", "voc12aug")
#: Paper names whose config / record name differs.
PAPER_TO_CONFIG_DATASET: dict[str, str] = {
    d.id: d.config for d in DATASETS.values() if d.config != d.id
}
CONFIG_TO_PAPER_DATASET: dict[str, str] = {v: k for k, v in PAPER_TO_CONFIG_DATASET.items()}
#: Other spellings met in records and on command lines -> the paper's name.
DATASET_ALIASES: dict[str, str] = {
    **CONFIG_TO_PAPER_DATASET,
    "stanford_cars": "cars",
    "food-101": "food",
    "oxford_pets": "pets",
    "cifar-100": "cifar100",
    "cifar-10": "cifar10",
    "voc12_aug": "voc12aug",
}
#: Table column headers per paper dataset name.
DATASET_HEADERS: dict[str, str] = {d.id: d.header for d in DATASETS.values() if d.paper}


def norm_dataset(name: Any) -> str:
    """A dataset name as the paper's tables spell it (``stanford-cars`` -> ``cars``); names
    that are neither an alias nor known come back lower-cased and stripped."""
    name = str(name or "").strip().lower()
    return DATASET_ALIASES.get(name, name)


def config_dataset(name: Any) -> str:
    """A dataset name as configs and records spell it (``cars`` -> ``stanford-cars``)."""
    paper = norm_dataset(name)
    return PAPER_TO_CONFIG_DATASET.get(paper, paper)


# --------------------------------------------------------------------------------------- tags
MethodKey = tuple[str, "str | None", "int | None"]


def _int_or_none(v: Any) -> int | None:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return None
    return int(float(v))


def method_key(
    method: str, select: str | None = None, r: Any = None, rank: Any = None
) -> MethodKey:
    """Normalised identity of a method row: ``(method, select, r)`` for LP selections,
    ``(method, "lhe", rank)`` for LHE, ``(method, None, None)`` for the methods without WHT
    bases. ``select`` defaults to ``lp_l1``; ``r`` / ``rank`` may be strings or floats (CSV
    cells), empty meaning None; an unknown ``method`` is a ValueError naming the known ids."""
    method = method_spec(str(method)).id
    if not method_spec(method).has_bases:
        return (method, None, None)
    select = select or DEFAULT_SELECTION
    if select == "lhe":
        return (method, "lhe", _int_or_none(rank))
    return (method, str(select), _int_or_none(r))


def method_sort_key(key: MethodKey) -> tuple:
    """Sort key putting method rows in table order: method, then selection, then r."""
    method, select, r = key
    order = list(METHOD_SPECS)
    m = order.index(method) if method in METHOD_SPECS else len(order)
    s = SELECTIONS.index(select) if select in SELECTIONS else -1
    return (m, s, r if r is not None else -1, method)


def method_tag(key: MethodKey) -> str:
    """Tag of a method row in run ids: ``full_bp``, ``lbp_wht-lp_l1-4``, ``lbp_wht-lhe-R10``.

    Run ids name work dirs that hold finished runs, so this spelling never changes."""
    method, select, r = key
    if select is None:
        return method
    return f"{method}-{select}-{'R' if select == 'lhe' else ''}{r}"


def method_label(key: MethodKey, latex: bool = False) -> str:
    """Row label: ``Head only``, ``Full BP``, ``LoRA``, ``LoRA-all``, ``LP_L1-4``,
    ``LP_Linf-3``, ``LHE``, ``LP_L1-4 + LoRA-all``, ``LoSA`` (LaTeX subscripts with
    ``latex=True``)."""
    method, select, r = key
    spec = method_spec(method)
    if not spec.has_bases:
        return spec.label
    select = select or DEFAULT_SELECTION
    names = _SELECTION_LATEX if latex else SELECTION_LABELS
    lbp = names["lhe"] if select == "lhe" else f"{names.get(select, select)}-{r}"
    return lbp + spec.combined_label


def rank_of(key: MethodKey, lora_rank: Any = None, order: int = DEFAULT_ORDER) -> int | None:
    """The "R" of a row: number of WHT bases for LBP methods, the LoRA rank for LoRA and
    LoRA-all (``lora_rank``, default :data:`DEFAULT_LORA_RANK`), the mixer rank for LoSA
    (``lora_rank`` if given, default :data:`DEFAULT_LOSA_RANK`), None for Full BP / head
    only / an LBP row without r."""
    method, select, r = key
    spec = method_spec(method)
    if not spec.has_bases and spec.rank is not None:  # MethodSpec.rank: LoRA's, LoSA's
        rank = _int_or_none(lora_rank)
        return spec.rank if rank is None else rank
    if select is None or r is None:
        return None
    return num_bases(select, r, order)


def lbp_options(key: MethodKey) -> dict[str, Any]:
    """The ``lbp`` config fields that select this method row: ``method`` and, for LBP
    methods, ``select`` and ``r`` (LP) or ``rank`` (LHE)."""
    method, select, r = key
    opts: dict[str, Any] = {"method": method}
    if select is not None:
        opts["select"] = select
        opts["rank" if select == "lhe" else "r"] = r
    return opts


def config_tag(key: MethodKey, variant: str = "") -> str:
    """Tag of a method row in config file names: ``full-bp``, ``lora``, ``lora-all``,
    ``head-only``, ``losa``, ``lp-l1-r4``, ``lp-linf-r3``, ``lhe-rank10``, ``lp-l1-r4+lora-all``.
    A ``variant`` (a special run such as Figure 5's ``spectrum``) is its own tag."""
    if variant:
        return variant
    method, select, r = key
    spec = method_spec(method)
    if select is None:
        return spec.tag
    sel = select.replace("_", "-")
    tag = f"lhe-rank{r}" if select == "lhe" else f"{sel}-r{r}"
    return tag + spec.combined_tag


_LBP_TAG = re.compile(r"^(lp-l1|lp-linf)-r(\d+)$|^lhe-rank(\d+)$")


def parse_config_tag(tag: str) -> MethodKey:
    """The method key of a :func:`config_tag` (``lp-l1-r4+lora-all`` ->
    ``("lbp_wht+lora_all", "lp_l1", 4)``); a ValueError naming the tag if it is none."""
    specs = METHOD_SPECS.values()
    for spec in specs:
        if not spec.has_bases and spec.tag == tag:
            return (spec.id, None, None)
    by_suffix = {s.combined_tag: s.id for s in specs if s.has_bases}
    body, suffix = tag, ""
    for sfx in sorted(filter(None, by_suffix), key=len, reverse=True):
        if tag.endswith(sfx):
            body, suffix = tag[: -len(sfx)], sfx
            break
    m = _LBP_TAG.match(body)
    if not m or suffix not in by_suffix:
        raise ValueError(
            f"{tag!r} is not a config method tag (e.g. full-bp, lora-all, lp-l1-r4, "
            "lp-linf-r3, lhe-rank10, lp-l1-r4+lora-all)"
        )
    method = by_suffix[suffix]
    if m.group(3) is not None:
        return (method, "lhe", int(m.group(3)))
    return (method, m.group(1).replace("-", "_"), int(m.group(2)))


def config_name(model: str, scope: str, key: MethodKey, dataset: str, variant: str = "") -> str:
    """File name of the generated config of a row:
    ``<model>_<scope>_<config tag>_<config dataset name>.py``."""
    return f"{model}_{scope}_{config_tag(key, variant)}_{config_dataset(dataset)}.py"


def parse_config_name(name: str) -> tuple[str, str, str, str]:
    """``(model, scope, config tag, dataset as written)`` of a generated config's file name
    (``.py`` optional); a ValueError naming the file if it does not have four fields."""
    stem = name[:-3] if name.endswith(".py") else name
    parts = stem.split("_")
    if len(parts) != 4:
        raise ValueError(f"config name {name!r} is not <model>_<scope>_<method tag>_<dataset>.py")
    model, scope, tag, dataset = parts
    return model, scope, tag, dataset
