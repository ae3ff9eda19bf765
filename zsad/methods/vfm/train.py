"""Training AnomalyVFM's adapters, decoder and head (``zsad train-vfm``; MaticFuc/AnomalyVFM ``train.py``).

The official recipe: the backbone frozen; DoRA (rank 64, alpha 1) on every attention's q, v and output projection,
the decoder and the head trained; AdamW, lr 1e-4, weight decay 1e-2, constant; 32 images per step as 4 accumulated
micro-batches of 8; 768 px; 200 steps for RADIO, 500 for DINOv2 / DINOv3 / CLIP; seed 12. Per micro-batch::

    image loss = sigmoid_focal_loss(head(summary), label)                                   (mean)
    mask loss  = mean( c * (5 * focal(mask, gt) + |clip(sigmoid(mask), 0.1, 0.9) - gt|) - 0.1 * log c ),
                 c = 1 + exp(confidence)
    loss = (image loss + mask loss) / accumulation

with the targets binarised at 0.5 after a bilinear resize to the decoder's 96 x 96 (``T.Resize`` on the mask
tensor). The adapters are applied to the frozen weights at every step (:func:`~zsad.methods.vfm.dora.run_adapted`),
as the official wrappers do in their forward.

Data: any labelled set zsad reads (MVTec layout, metajson, folder), normal and anomalous images with masks (an
anomalous image without a mask counts as all-normal pixels). The official data are FLUX-generated objects with
inpainted defects (an authenticated Hugging Face dataset); ``zsad make-synthetic`` data are the offline default.

The stream of images is fixed by the seed (one shuffled pass after another, as the official infinite loader), so a
step's images depend only on (seed, step): ``--resume`` continues after the last saved step exactly. Every
``save_every`` steps and at the end the output folder (adapter, ``train_state.safetensors`` with the trained
tensors and AdamW's state, ``train_log.csv``) is written anew and swapped in at once
(:func:`zsad.fileio.atomic_dir`). Under ``torchrun`` the micro-batches of a step are dealt to the ranks and the
gradients summed over them, so every rank takes the official step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsad.backbones.base import Backbone
from zsad.distributed import Dist
from zsad.errors import DatasetError, UsageError
from zsad.fileio import atomic_dir
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
from zsad.methods.vfm.adapter import VfmModules, VfmSettings, save_vfm_adapter
from zsad.methods.vfm.dora import DEFAULT_ALPHA, DEFAULT_RANK, run_adapted
from zsad.methods.vfm.families import FAMILIES, RESIZE_FILTER, family_of
from zsad.methods.vfm.features import vfm_features

log = logging.getLogger(__name__)

LOG_FIELDS = ("step", "loss", "image_loss", "mask_loss", "seconds")
#: steps of the official recipe for a backbone of none of its families (theirs: :mod:`.families`)
OTHER_STEPS = 500


@dataclass(frozen=True)
class VfmTrainConfig:
    """``zsad train-vfm`` options; defaults are the official recipe (module doc)."""

    data: Path
    out: Path
    format: str = "auto"
    split: str = "all"
    categories: tuple[str, ...] | None = None
    backbone: str = "radio:v2.5-l"
    image_size: int | None = None  # None: the family's official size (768 RADIO and DINOv3, 672 DINOv2 and CLIP)
    steps: int | None = None  # None: the family's official steps (200 for RADIO, 500 for DINOv2 and CLIP)
    batch_size: int = 32
    accumulation: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-2
    rank: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA
    seed: int = 12
    save_every: int = 50
    device: str = "auto"
    precision: str = "fp32"  # the official training runs fp32
    workers: int = 0
    resume: bool = False
    progress: bool = True
    cache_dir: str | None = None

    def total_steps(self) -> int:
        family = family_of(self.backbone)
        return self.steps if self.steps is not None else family.steps if family else OTHER_STEPS

    def input_size(self) -> int:
        family = family_of(self.backbone)
        return self.image_size or (family.image_size if family else FAMILIES["radio"].image_size)

    def check(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"steps must be at least 1, got {self.steps}")
        if self.accumulation < 1 or self.batch_size < self.accumulation or self.batch_size % self.accumulation:
            raise UsageError(f"the batch ({self.batch_size}) must be a positive multiple of the accumulation steps "
                             f"({self.accumulation})")
        if not self.lr > 0 or self.weight_decay < 0:
            raise UsageError(f"learning rate must be positive and weight decay not negative, got {self.lr}, "
                             f"{self.weight_decay}")
        if self.save_every < 1 or self.workers < 0:
            raise UsageError("save-every must be at least 1 and workers not negative")

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.accumulation


def training_samples(data: Path, format: str = "auto", split: str = "all",
                     categories: tuple[str, ...] | None = None) -> tuple[list, dict[str, Any]]:
    """Labelled samples of the chosen categories and split(s) (``all``: train and test), and their summary; some
    must be anomalous."""
    samples, summary = labelled_samples(data, format, ("train", "test") if split == "all" else (split,), categories)
    if not summary["n_anomalous"]:
        raise DatasetError(f"{data}: AnomalyVFM trains on normal and anomalous images with masks; the "
                           f"{summary['n_images']} images of split(s) {summary['split']} are all normal")
    return samples, {**summary, "split": split}


class MaskedImages(LabelledImages):
    """(preprocessed image, mask ``[1, m, m]`` in {0, 1}, label): the mask resized bilinearly with antialiasing
    (``T.Resize`` on a tensor) to the decoder's size and thresholded at 0.5 (``aux_dataset.py``)."""

    def __init__(self, samples: list, preprocess, mask_size: int) -> None:
        super().__init__(samples, preprocess)
        self.mask_size = mask_size

    def resize_mask(self, mask: np.ndarray) -> torch.Tensor:
        import torch.nn.functional as F

        tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
        resized = F.interpolate(tensor, size=(self.mask_size, self.mask_size), mode="bilinear", align_corners=False,
                                antialias=True)[0]
        return (resized > 0.5).float()

    def label(self, sample) -> float:
        return float(sample.label)


def vfm_loss(score_logits: torch.Tensor, mask_logits: torch.Tensor, confidence: torch.Tensor, labels: torch.Tensor,
             masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image loss, mask loss) of one micro-batch (``train.py``'s loop)."""
    from torchvision.ops import sigmoid_focal_loss

    image = sigmoid_focal_loss(score_logits, labels, reduction="mean")
    inner = 5 * sigmoid_focal_loss(mask_logits, masks, reduction="none") \
        + (mask_logits.sigmoid().clip(0.1, 0.9) - masks).abs()
    c = 1 + confidence.exp()
    return image, (c * inner - 0.1 * c.log()).mean()


class VfmTrainer:
    """The trained parts on a frozen backbone, AdamW, and one official step."""

    def __init__(self, backbone: Backbone, modules: VfmModules, *, lr: float, weight_decay: float,
                 dtype: torch.dtype = torch.float32) -> None:
        if any(p.requires_grad for p in backbone.parameters()):
            raise RuntimeError("the backbone must be frozen: only adapters, decoder and head are trained")
        self.backbone = backbone
        self.modules = modules.to(backbone.device).train()
        self.dtype = dtype
        self.optimizer = torch.optim.AdamW(self.modules.parameters(), lr=lr, weight_decay=weight_decay)

    def micro_loss(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from zsad.device import autocast

        device = self.backbone.device
        with autocast(device, self.dtype):
            summary, spatial = run_adapted(self.backbone, self.modules.dora, vfm_features, images.to(device))
            mask_logits, confidence = self.modules.decoder(spatial)
            score = self.modules.head(summary).squeeze(1)
        image, mask = vfm_loss(score.float(), mask_logits.float(), confidence.float(), labels.to(device).float(),
                               masks.to(device))
        return image, mask

    def step(self, micro_batches: list, total_micro: int, dist: Dist | None = None) -> tuple[float, float]:
        """One optimiser step over this rank's micro-batches of the step (``total_micro`` over all ranks): each
        micro-batch's loss divided by ``total_micro`` (the official ``loss /= accumulation_steps``), gradients
        summed over the ranks. Returns this rank's summed (image loss, mask loss) of the micro-batches."""
        self.optimizer.zero_grad(set_to_none=False)
        sums = [0.0, 0.0]
        for images, masks, labels in micro_batches:
            image, mask = self.micro_loss(images, masks, labels)
            ((image + mask) / total_micro).backward()
            sums[0] += float(image.detach())
            sums[1] += float(mask.detach())
        if dist is not None and dist.active:
            self._sum_gradients(dist)
        self.optimizer.step()
        return sums[0], sums[1]

    def _sum_gradients(self, dist: Dist) -> None:
        import torch.distributed as torch_dist

        params = list(self.modules.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        flat = flat.to(dist._device())
        dist._call("summing gradients", torch_dist.all_reduce, flat)
        flat = flat.to(params[0].device)
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    # -- state as tensors only (safetensors), so resuming never unpickles ----------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = optimizer_tensors(self.optimizer, "adamw")
        tensors.update({f"modules.{k}": v.detach().cpu().contiguous() for k, v in self.modules.state_dict().items()})
        return tensors, meta

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.modules.load_state_dict({k[len("modules."):]: v for k, v in tensors.items() if k.startswith("modules.")})
        load_optimizer_tensors(self.optimizer, tensors, meta, "adamw", self.backbone.device)


def step_indices(n: int, batch: int, seed: int, step: int) -> list[int]:
    """The images of step ``step`` (0-based): positions ``[step * batch, (step + 1) * batch)`` of the stream made of
    one seeded shuffle of the ``n`` images after another (the official infinite shuffled loader)."""
    out = []
    for position in range(step * batch, (step + 1) * batch):
        epoch, offset = divmod(position, n)
        order = _order(n, seed, epoch)
        out.append(order[offset])
    return out


_ORDERS: dict[tuple[int, int, int], list[int]] = {}


def _order(n: int, seed: int, epoch: int) -> list[int]:
    key = (n, seed, epoch)
    if key not in _ORDERS:
        if len(_ORDERS) > 8:
            _ORDERS.clear()
        _ORDERS[key] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return _ORDERS[key]


def my_micro_batches(indices: list[int], micro: int, dist: Dist | None) -> tuple[list[list[int]], int]:
    """This rank's micro-batches of a step (dealt round-robin over the ranks) and how many the step has."""
    chunks = [indices[i:i + micro] for i in range(0, len(indices), micro)]
    world, rank = (dist.world_size, dist.rank) if dist is not None and dist.active else (1, 0)
    return chunks[rank::world], len(chunks)


def train_vfm(config: VfmTrainConfig, dist: Dist | None = None) -> Path:
    """Train (or resume) and return the adapter folder ``config.out``."""
    from tqdm.auto import tqdm

    from zsad.backbones import load_backbone
    from zsad.device import resolve_device, resolve_precision
    from zsad.methods.vfm.method import VfmMethod

    dist = dist or Dist()
    config.check()
    out = Path(config.out)
    prepare_out(out, config.resume, dist)
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    total = config.total_steps()
    samples, summary = training_samples(config.data, config.format, config.split, config.categories)
    backbone = load_backbone(config.backbone, image_size=config.input_size(), device=device, cache_dir=config.cache_dir,
                             pos_interpolation=VfmMethod.pos_interpolation_for(config.backbone), warn_random=False)
    backbone.resize_filter = RESIZE_FILTER  # loaded for this run only
    settings = VfmSettings.for_backbone(backbone, rank=config.rank, alpha=config.alpha)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        modules = VfmModules(settings)
    modules.dora.reset_magnitudes(backbone)  # the official init: B = 0, magnitudes = the frozen rows' norms
    trainer = VfmTrainer(backbone, modules, lr=config.lr, weight_decay=config.weight_decay, dtype=dtype)
    signature = {"data": str(config.data), "split": config.split, "batch_size": config.batch_size,
                 "accumulation": config.accumulation, "lr": config.lr, "weight_decay": config.weight_decay,
                 "seed": config.seed, "processes": dist.world_size, **settings.to_config()}
    done = 0
    if config.resume and (out / STATE_NAME).is_file():
        tensors, meta = read_state(out)
        if meta.get("signature") != signature:
            raise UsageError(f"{out}: the interrupted run used other settings ({meta.get('signature')}); resume with "
                             f"the same options or choose another --out")
        trainer.load_state_tensors(tensors, meta)
        done = int(meta["steps_done"])
        log.info("resuming %s after step %d of %d", out, done, total)
    rows = read_log(out, "step", done) if done else []
    dataset = MaskedImages(samples, backbone.preprocess, backbone.grid_size * 2 ** settings.upsample_blocks)
    plan = [my_micro_batches(step_indices(len(dataset), config.batch_size, config.seed, step), config.micro_batch,
                             dist) for step in range(done, total)]
    loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=[b for mine, _ in plan for b in mine],
                                              num_workers=config.workers, collate_fn=_collate))
    bar = tqdm(total=total, initial=done, unit="step", disable=not config.progress or not dist.is_main or None,
               desc="train-vfm")
    started = time.perf_counter()
    try:
        for step, (mine, count) in enumerate(plan, start=done):
            batches = [next(loader) for _ in mine]
            image, mask = trainer.step(batches, count, dist)
            totals = np.sum(dist.all_gather_object([image, mask], "summing the step's losses"), axis=0) / count
            check_same_parameters(fingerprint(trainer.modules.parameters()), dist)
            rows.append({"step": step + 1, "loss": f"{totals.sum():.6f}", "image_loss": f"{totals[0]:.6f}",
                         "mask_loss": f"{totals[1]:.6f}", "seconds": f"{time.perf_counter() - started:.2f}"})
            bar.update(1)
            bar.set_postfix(loss=f"{totals.sum():.4f}")
            if (step + 1) % config.save_every == 0 or step + 1 == total:
                training = {**summary, "steps": total, "steps_done": step + 1, "batch_size": config.batch_size,
                            "accumulation": config.accumulation, "lr": config.lr, "weight_decay": config.weight_decay,
                            "optimizer": "AdamW", "seed": config.seed, "precision": config.precision,
                            "final_loss": round(float(totals.sum()), 6), "processes": dist.world_size}
                if dist.is_main:
                    with atomic_dir(out) as folder:  # state, adapter and log of this step appear together
                        tensors, meta = trainer.state_tensors()
                        write_state(folder, tensors, {"steps_done": step + 1, "signature": signature, **meta})
                        save_vfm_adapter(folder, trainer.modules, training=training, source={"kind": "trained"})
                        write_log(folder, rows, LOG_FIELDS)
                dist.barrier("writing the adapter")
    finally:
        bar.close()
    return out


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, masks, labels = zip(*items)
    return torch.stack(images), torch.stack(masks), torch.tensor(labels)


__all__ = ["MaskedImages", "VfmTrainConfig", "VfmTrainer", "train_vfm", "training_samples", "vfm_loss"]
