"""What every trainer of learned parts writes beside its adapter (``train-prompts``, ``train-vfm``): the resume state
as tensors only (safetensors, so resuming never unpickles), the per-epoch or per-step log, and the data-parallel
invariant that every rank holds the same parameters after a step."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zsad.distributed import Dist, DistributedError
from zsad.errors import UsageError
from zsad.fileio import atomic_write_text

STATE_NAME = "train_state.safetensors"
LOG_NAME = "train_log.csv"


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser's per-parameter state as ``{prefix}.{index}.{field}`` tensors, and its param groups."""
    state = optimizer.state_dict()
    tensors = {f"{prefix}.{index}.{key}": torch.as_tensor(value).detach().cpu().contiguous()
               for index, fields in state["state"].items() for key, value in fields.items()}
    return tensors, {"param_groups": state["param_groups"]}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                           prefix: str, device: torch.device) -> None:
    """The inverse of :func:`optimizer_tensors` (``step`` counters stay on the host, as torch keeps them)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, index, field = key.split(".", 2)
            state.setdefault(int(index), {})[field] = value if field == "step" else value.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_state(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """The resume state as a plain file in ``folder`` (the new folder of an :func:`zsad.fileio.atomic_dir`)."""
    from safetensors.torch import save_file

    save_file(tensors, str(folder / STATE_NAME), metadata={"zsad": json.dumps(meta)})


def read_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = folder / STATE_NAME
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = json.loads(handle.metadata()["zsad"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - any unreadable state is one user-facing error
        raise UsageError(f"{path}: cannot resume from this training state ({exc})") from None
    return tensors, meta


def write_log(folder: Path, rows: list[dict[str, Any]], fields: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / LOG_NAME, buffer.getvalue())


def read_log(folder: Path, counter: str, done: int) -> list[dict[str, Any]]:
    """The log's rows up to ``counter`` (``epoch`` / ``step``) ``done``: a resumed run keeps them."""
    path = folder / LOG_NAME
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row[counter]) <= done]


def check_same_parameters(fingerprint: float, dist: Dist, what: str = "parameters") -> None:
    """Every rank must hold the same parameters after a step (data parallelism's invariant)."""
    if not dist.active:
        return
    prints = dist.all_gather_object(fingerprint, "comparing the ranks' parameters")
    if max(prints) - min(prints) > 1e-9 * max(1.0, abs(prints[0])):
        raise DistributedError(f"the ranks' {what} differ after a step ({prints}); this is a bug")


def fingerprint(parameters) -> float:
    """A number that differs when the parameters differ (the ranks compare it after every step)."""
    return float(sum(p.detach().double().sum() + (p.detach().double() ** 2).sum() for p in parameters))


def prepare_out(out: Path, resume: bool, dist: Dist) -> None:
    """Put back a folder a killed run left aside mid-swap (rank 0), and refuse to start over a finished or
    interrupted run unless resuming."""
    from zsad.fileio import settle_dir

    if dist.is_main:
        settle_dir(out)
    dist.barrier("checking the output folder")
    if not resume and out.exists() and any((out / n).exists() for n in (STATE_NAME, "adapter.json")):
        raise UsageError(f"{out} already holds an adapter or a training run; pass --resume to continue it, or "
                         f"choose another --out")


def labelled_samples(data: Path, format: str, splits: Sequence[str],
                     categories: Sequence[str] | None = None) -> tuple[list, dict[str, Any]]:
    """The samples of every chosen category in ``splits`` (a split a category lacks is skipped), and the summary an
    adapter records; an anomalous image without a mask is said once (its pixels count as normal)."""
    import logging

    from zsad.data.datasets import open_dataset
    from zsad.errors import DatasetError

    dataset = open_dataset(data, format=format, categories=categories)
    samples = []
    for category in dataset.categories:
        for split in splits:
            try:
                samples += dataset.samples(category, split)
            except DatasetError:
                if len(splits) == 1:
                    raise
    if not samples:
        raise DatasetError(f"{data}: no {'/'.join(splits)} images in categories {', '.join(dataset.categories)}")
    anomalous = sum(s.label == 1 for s in samples)
    masks = sum(s.mask_path is not None for s in samples)
    if anomalous and masks < anomalous:
        logging.getLogger(__name__).warning("%d of %d anomalous training images have no mask; they count as "
                                            "all-normal pixels (as in the official code)", anomalous - masks, anomalous)
    summary = {"root": str(data), "format": dataset.format, "split": "+".join(splits),
               "categories": list(dataset.categories), "n_images": len(samples), "n_anomalous": anomalous,
               "n_masks": masks}
    return samples, summary


class LabelledImages(torch.utils.data.Dataset):
    """(preprocessed image, mask from :meth:`resize_mask`, label) of labelled samples; subclasses resize the mask as
    their official training does."""

    def __init__(self, samples: Sequence, preprocess) -> None:
        self.samples = list(samples)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def resize_mask(self, mask) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int):
        from zsad.data.datasets import load_mask
        from zsad.data.images import load_image

        sample = self.samples[index]
        image = load_image(sample.image_path)
        mask = load_mask(sample.mask_path, image.size, sample.image_path)
        return self.preprocess([image])[0], self.resize_mask(mask), self.label(sample)

    def label(self, sample) -> int | float:
        return int(sample.label)
