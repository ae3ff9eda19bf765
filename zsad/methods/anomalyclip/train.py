"""Training AnomalyCLIP prompts on an auxiliary dataset with masks (zqhang/AnomalyCLIP ``train.py``).

Published protocol: train on the *test* split of MVTec AD (evaluate on VisA, MPDD, BTAD, ...) or of VisA
(evaluate on MVTec AD); Adam lr 1e-3, betas (0.5, 0.999), batch 8, 15 epochs, seed 111, 518 px, no
augmentation, the last epoch is kept. Images and masks are squash-resized together (masks bilinearly, then
thresholded at 0.5, as the official ``target_transform``), never center-cropped apart.

The output folder is an adapter folder plus ``train_state.safetensors`` (learner and Adam state, tensors only)
and ``train_log.csv`` (one row per epoch). After every epoch the whole folder is written anew and swapped in
at once (:func:`zsad.fileio.atomic_dir`), so adapter, state and log always belong to the same epoch, and
``resume=True`` continues after the last finished epoch with the same data order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zsad.backbones import ClipBackbone
from zsad.backbones.names import DEFAULT_BACKBONE
from zsad.distributed import Dist
from zsad.errors import UsageError
from zsad.fileio import atomic_dir
from zsad.methods.anomalyclip.adapter import KIND, PromptSettings, save_prompt_adapter
from zsad.methods.anomalyclip.forward import (
    image_features,
    probability_maps,
    resolve_dpam_layers,
    resolve_taps,
    state_logits,
)
from zsad.methods.anomalyclip.losses import LossParts, anomalyclip_loss
from zsad.methods.anomalyclip.prompts import PromptLearner, PromptTextEncoder, resolve_shape, text_width
from zsad.methods.training import (
    STATE_NAME,
    LabelledImages,
    check_same_parameters,
    fingerprint,
    labelled_samples,
    load_optimizer_tensors,
    optimizer_tensors,
    prepare_out,
    read_log,
    read_state,
    write_log,
    write_state,
)

log = logging.getLogger(__name__)

LOG_FIELDS = ("epoch", "steps", "loss", "global_loss", "local_loss", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    """``zsad train-prompts`` options; defaults are the published ones (module doc)."""

    data: Path
    out: Path
    format: str = "auto"
    split: str = "test"
    categories: tuple[str, ...] | None = None
    backbone: str = DEFAULT_BACKBONE
    activation: str = "auto"  # the backbone's MLP activation; auto: AnomalyCLIP's (the weights' own, QuickGELU)
    epochs: int = 15
    lr: float = 1e-3
    batch_size: int = 8
    image_size: int = 518
    seed: int = 111
    taps: str | tuple[int, ...] = "last"
    local_weight: float | None = None  # None: 4 with one tap (released), 1 with several (paper)
    n_ctx: int = 12
    deep_length: int = 4
    deep_depth: int | None = None  # None: 9, clipped to the text depth
    dpam_layers: int | None = None  # None: 19 of 24, scaled to the vision depth
    device: str = "auto"
    precision: str = "fp32"  # official training is fp32; fp16/bf16 autocast the frozen vision pass only
    workers: int = 0
    resume: bool = False
    progress: bool = True
    cache_dir: str | None = None

    def check(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if self.workers < 0:
            raise UsageError(f"workers must not be negative, got {self.workers}")


class MaskedImages(LabelledImages):
    """(image tensor, mask ``[S, S]`` in {0, 1}, label) for training; both squash-resized to ``size``."""

    def __init__(self, samples: Sequence, preprocess, size: int) -> None:
        super().__init__(samples, preprocess)
        self.size = size

    def resize_mask(self, mask: np.ndarray) -> torch.Tensor:
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy((np.asarray(resized, dtype=np.float32) / 255.0 > 0.5).astype(np.float32))


def training_samples(data: Path, format: str = "auto", split: str = "test",
                     categories: Sequence[str] | None = None) -> tuple[list, dict[str, Any]]:
    """Samples of every chosen category of one split, and the summary recorded in ``adapter.json``."""
    return labelled_samples(data, format, (split,), categories)


class PromptTrainer:
    """One AnomalyCLIP training step on a batch; the backbone is frozen and checked to stay so."""

    def __init__(self, backbone: ClipBackbone, learner: PromptLearner, *, taps: Sequence[int], dpam_layers: int,
                 local_weight: float, lr: float = 1e-3, dtype: torch.dtype = torch.float32) -> None:
        if any(p.requires_grad for p in backbone.parameters()):
            raise RuntimeError("the backbone must be frozen: only prompt parameters are trained")
        self.backbone = backbone
        self.learner = learner.to(backbone.device).train()
        self.encoder = PromptTextEncoder(backbone, learner.shape)
        self.taps = list(taps)
        self.dpam_layers = dpam_layers
        self.local_weight = local_weight
        self.dtype = dtype
        self.optimizer = torch.optim.Adam(self.learner.parameters(), lr=lr, betas=(0.5, 0.999))

    def loss(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> LossParts:
        """The objective on a batch, with gradients for the prompt parameters only."""
        device = self.backbone.device
        with torch.no_grad():
            feats = image_features(self.backbone, images.to(device), self.taps, self.dpam_layers, self.dtype)
        text = self.encoder(self.learner)
        maps = [probability_maps(p, text, self.backbone.image_size) for p in feats.patches]
        return anomalyclip_loss(state_logits(feats.global_, text), labels.to(device), maps, masks.to(device),
                                self.local_weight)

    def step(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, dist: Dist | None = None
             ) -> LossParts | None:
        """One optimiser step. With several ranks each holds a slice of the global batch (possibly empty): the
        gradients are averaged over all the batch's images (each rank's mean-loss gradient weighted by its image
        count, summed with ``all_reduce``), so every rank takes the same step — DDP's rule, done by hand because
        the learner is read by the text encoder rather than called through ``forward``."""
        self.optimizer.zero_grad(set_to_none=False)
        parts = None
        if images.shape[0]:
            parts = self.loss(images, masks, labels)
            parts.total.backward()
        if dist is not None and dist.active:
            self._average_gradients(images.shape[0], dist)
        self.optimizer.step()
        return parts

    def _average_gradients(self, count: int, dist: Dist) -> None:
        import torch.distributed as torch_dist

        params = [p for p in self.learner.parameters() if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * count
                          for p in params] + [torch.tensor([float(count)], device=params[0].device)])
        flat = flat.to(dist._device())
        dist._call("averaging gradients", torch_dist.all_reduce, flat)
        flat = flat.to(params[0].device)
        total = float(flat[-1])
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = (flat[offset:offset + n] / total).view_as(p).to(p.dtype)
            offset += n

    def fingerprint(self) -> float:
        """A number that differs when the learned parameters differ (the ranks compare it after every step)."""
        return fingerprint(self.learner.parameters())

    # -- state as tensors only (safetensors), so resuming never unpickles --------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = optimizer_tensors(self.optimizer, "adam")
        tensors.update({f"learner.{k}": v for k, v in self.learner.tensors().items()})
        return tensors, meta

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        device = self.backbone.device
        with torch.no_grad():
            for name in PromptLearner.TENSOR_NAMES:
                getattr(self.learner, name).copy_(tensors[f"learner.{name}"].to(device))
        load_optimizer_tensors(self.optimizer, tensors, meta, "adam", device)


def _signature(config: TrainConfig, settings: PromptSettings) -> dict[str, Any]:
    """Settings a resumed run must share with the interrupted one."""
    return {"data": str(config.data), "split": config.split, "lr": config.lr, "batch_size": config.batch_size,
            "seed": config.seed, **settings.to_config()}


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, dist: Dist | None = None) -> list[list[int]]:
    """This rank's image indices for each step of an epoch. The order depends only on (seed, epoch), so a resumed
    run sees the same batches; with R ranks a step's global batch is ``batch_size * R`` images and rank r takes the
    r-th ``batch_size`` of it (the last step's slices may be short or empty). One process gets the order
    ``DataLoader(shuffle=True)`` draws from the same generator."""
    world, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    step = batch_size * world
    return [order[s + rank * batch_size: s + (rank + 1) * batch_size] for s in range(0, n, step)]


def train_prompts(config: TrainConfig, dist: Dist | None = None) -> Path:
    """Train (or resume) and return the adapter folder ``config.out``.

    Under ``torchrun`` / ``accelerate launch`` (``dist`` with several ranks) the data are split per step (see
    :func:`epoch_batches`): the effective batch is ``batch_size`` x ranks and the learning rate is used as given
    (scale it yourself, e.g. linearly with the effective batch, when you change the number of ranks); gradients are
    averaged over the effective batch, so every rank takes the same step (checked after every step). Rank 0 writes
    the adapter, the resume state and the log; ``--resume`` works the same.
    """
    from tqdm.auto import tqdm

    from zsad.backbones import load_backbone
    from zsad.device import resolve_device, resolve_precision
    from zsad.methods.anomalyclip.method import AnomalyClipMethod

    dist = dist or Dist()
    config.check()
    out = Path(config.out)
    prepare_out(out, config.resume, dist)  # a run killed mid-swap left the previous epoch aside: put back
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    samples, summary = training_samples(config.data, config.format, config.split, config.categories)
    activation = AnomalyClipMethod.activation_for(config.activation, config.backbone, config.image_size,
                                                  cache_dir=config.cache_dir)
    backbone = load_backbone(config.backbone, image_size=config.image_size, device=device,
                             cache_dir=config.cache_dir, pos_interpolation=AnomalyClipMethod.pos_interpolation,
                             activation=activation, warn_random=False)
    taps = resolve_taps(backbone, config.taps)
    dpam_layers = resolve_dpam_layers(backbone, config.dpam_layers)
    shape = resolve_shape(backbone, config.n_ctx, config.deep_length, config.deep_depth)
    local_weight = config.local_weight if config.local_weight is not None else (4.0 if len(taps) == 1 else 1.0)
    settings = PromptSettings(backbone=config.backbone, image_size=config.image_size, taps=tuple(taps),
                              dpam_layers=dpam_layers, shape=shape, local_weight=local_weight,
                              activation=backbone.activation)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        learner = PromptLearner(shape, text_width(backbone))
    trainer = PromptTrainer(backbone, learner, taps=taps, dpam_layers=dpam_layers, local_weight=local_weight,
                            lr=config.lr, dtype=dtype)
    signature = _signature(config, settings)
    if dist.active:
        signature["processes"] = dist.world_size  # the batches each step sees depend on it
    done = 0
    if config.resume and (out / STATE_NAME).is_file():
        tensors, meta = read_state(out)
        if meta.get("signature") != signature:
            raise UsageError(f"{out}: the interrupted run used other settings ({meta.get('signature')}); resume with "
                             f"the same options or choose another --out")
        trainer.load_state_tensors(tensors, meta)
        done = int(meta["epochs_done"])
        log.info("resuming %s after epoch %d of %d", out, done, config.epochs)
    rows = read_log(out, "epoch", done) if done else []
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dataset = MaskedImages(samples, backbone.preprocess, config.image_size)
    steps_per_epoch = len(epoch_batches(len(dataset), config.batch_size, config.seed, 0, dist))
    bar = tqdm(total=config.epochs * steps_per_epoch, initial=done * steps_per_epoch, unit="step",
               disable=not config.progress or not dist.is_main or None, desc="train-prompts")
    try:
        for epoch in range(done, config.epochs):
            started = time.perf_counter()
            batches = epoch_batches(len(dataset), config.batch_size, config.seed, epoch, dist)
            loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=[b for b in batches if b],
                                                      num_workers=config.workers))
            totals = np.zeros(4)  # loss sums weighted by images, and the image count
            for indices in batches:
                images, masks, labels = next(loader) if indices else _empty_batch(dataset.size)
                parts = trainer.step(images, masks, labels, dist)
                if parts is not None:
                    n = len(indices)
                    totals += [n * float(parts.total.detach()), n * float(parts.global_.detach()),
                               n * float(parts.local.detach()), n]
                check_same_parameters(trainer.fingerprint(), dist, "prompt parameters")
                bar.update(1)
            totals = np.sum(dist.all_gather_object(totals.tolist(), "summing the epoch's losses"), axis=0)
            means = totals[:3] / max(totals[3], 1)
            rows.append({"epoch": epoch + 1, "steps": len(batches), "loss": f"{means[0]:.6f}",
                         "global_loss": f"{means[1]:.6f}", "local_loss": f"{means[2]:.6f}",
                         "seconds": f"{time.perf_counter() - started:.2f}"})
            bar.set_postfix(epoch=epoch + 1, loss=f"{means[0]:.4f}")
            training = {**summary, "epochs": config.epochs, "epochs_done": epoch + 1, "lr": config.lr,
                        "betas": [0.5, 0.999], "batch_size": config.batch_size, "seed": config.seed,
                        "precision": config.precision, "final_loss": round(float(means[0]), 6),
                        "processes": dist.world_size, "effective_batch_size": config.batch_size * dist.world_size}
            if dist.is_main:
                with atomic_dir(out) as folder:  # state, adapter and log of this epoch appear together
                    tensors, meta = trainer.state_tensors()
                    write_state(folder, tensors, {"epochs_done": epoch + 1, "signature": signature, **meta})
                    save_prompt_adapter(folder, trainer.learner, settings, training=training,
                                        source={"kind": "trained"})
                    write_log(folder, rows, LOG_FIELDS)
            dist.barrier("writing the epoch's adapter")
    finally:
        bar.close()
    return out


def _empty_batch(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch of a rank whose slice of the last step is empty (it still takes part in the step)."""
    return torch.empty(0, 3, size, size), torch.empty(0, size, size), torch.empty(0, dtype=torch.long)


def training_config_fields() -> set[str]:
    """Field names of :class:`TrainConfig` (recipes are checked against them)."""
    return set(asdict(TrainConfig(data=Path("."), out=Path("."))))


__all__ = ["KIND", "MaskedImages", "PromptTrainer", "TrainConfig", "train_prompts", "training_samples"]
