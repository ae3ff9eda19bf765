"""zsad's methods as anomalib models (``AnomalibModule``): ``anomalib test --model zsad.integrations.anomalib.MuSc``.

Each class builds its detector with :func:`zsad.create` (nothing is built elsewhere) when Lightning sets it up, and
scores in its test/validation/predict steps. Nothing is trained: the models are ``ZERO_SHOT`` (``ReferenceScoring``
``FEW_SHOT``) like anomalib's WinCLIP, so ``Engine.fit`` only validates and a plain ``Trainer.fit`` is refused.

- **Pre-processor**: none (``PreProcessor()`` without a transform). The images reach zsad as anomalib reads them
  (8-bit RGB / 255 at their own size); zsad squashes them to ``image_size`` with PIL's bicubic filter and normalises
  with the backbone's mean and std itself (:mod:`zsad.integrations.anomalib.torch_model`), so the maps are zsad's
  own and come back at each image's size, where anomalib's metrics compare them with the masks.
- **Post-processor**: :class:`ZsadPostProcessor`, which keeps zsad's numbers: scores and maps stay zsad's
  probabilities, labels and masks are zsad's ``score >= threshold`` / ``map >= threshold`` (``threshold``, default
  0.5). anomalib's ``PostProcessor()`` may be passed instead (``--model.post_processor
  anomalib.post_processing.PostProcessor``): it then min-max normalises around an F1-adaptive threshold fitted on
  the validation set and makes the labels and masks itself, and its metrics are computed on the normalised values
  (whose clamping to [0, 1] can change AUROC).
- **Transductive methods** (``musc``, ``auto``, reference scoring of groups) score a whole set as one batch, as
  ``zsad score`` does with a folder: when an epoch starts, the stage's dataloader is read once, every image is
  scored in one group, and the steps then hand each anomalib batch its stored results (so the images are read
  twice; ``eval_batch_size`` does not change the scores). A batch given to ``forward`` directly is one group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from torch import nn
from torch.utils.data import DataLoader

from zsad.backbones.names import DEFAULT_BACKBONE
from zsad.errors import UsageError
from zsad.integrations.anomalib.torch_model import ZsadModel, inference_batch, score_together, to_pil

log = logging.getLogger(__name__)

_STAGES = {"val": ("val_dataloaders", "num_val_batches"), "test": ("test_dataloaders", "num_test_batches"),
           "predict": ("predict_dataloaders", "num_predict_batches")}


class ZsadPostProcessor(PostProcessor):
    """Keeps zsad's numbers: no normalisation, no threshold fitting (so nothing is needed from validation); the
    labels and masks are the ones the model made at zsad's threshold."""

    def __init__(self, **kwargs) -> None:
        super().__init__(enable_normalization=False, enable_thresholding=False, **kwargs)

    def forward(self, predictions):
        return predictions


class ZsadModule(AnomalibModule):
    """Base of the wrappers: one zsad method (``method``) on one backbone; see the module doc.

    Args:
        backbone: a zsad backbone name (``zsad models``), e.g. ``ViT-L-14-336:openai`` or ``tiny-random``.
        image_size: the size zsad squashes images to (518 for the published settings).
        class_name: the object's name in text prompts; default the datamodule's category, else zsad's default.
        threshold: zsad's decision threshold for labels and masks (with :class:`ZsadPostProcessor`).
        device, precision, batch_size, activation: as for ``zsad.create``.
        options: the method's own options (``zsad.create(**options)``, e.g. ``{"prompts": "my.yaml"}``).
        progress: show zsad's progress bar while a transductive method scores a whole set.
    """

    method: ClassVar[str] = ""

    def __init__(self, backbone: str = DEFAULT_BACKBONE, image_size: int = 518, class_name: str | None = None,
                 threshold: float = 0.5, device: str = "auto", precision: str = "auto", batch_size: int = 8,
                 activation: str = "auto", options: dict[str, Any] | None = None, progress: bool = True,
                 pre_processor: nn.Module | bool = True, post_processor: nn.Module | bool = True,
                 evaluator: Evaluator | bool = True, visualizer: Visualizer | bool = True) -> None:
        super().__init__(pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator,
                         visualizer=visualizer)
        self.settings = dict(backbone=backbone, image_size=image_size, threshold=threshold, device=device,
                             precision=precision, batch_size=batch_size, activation=activation, **(options or {}))
        self.class_name = class_name
        self.progress = progress
        self.model: ZsadModel | None = None
        self._prompted_for: str | None = None
        self._stored: dict[tuple[int, int], list] | None = None
        self._paths: dict[tuple[int, int], list[str] | None] = {}

    # -- building ------------------------------------------------------------------------------------------------
    def _create_options(self) -> dict[str, Any]:
        """Extra ``zsad.create`` arguments of a subclass (e.g. references)."""
        return {}

    def setup(self, stage: str | None = None) -> None:
        """Build the detector once (``zsad.create``) with the class name; Lightning calls this for every stage, and
        the text prompts are embedded again only when the class name changes."""
        del stage
        class_name = self._class_name()
        if self.model is None:
            import zsad

            detector = zsad.create(self.method, class_name=class_name, **self.settings, **self._create_options())
            self.model = ZsadModel(detector)
        elif class_name != self._prompted_for:
            self.model.detector.setup(class_name)
        self._prompted_for = class_name

    def _datamodule(self):
        trainer = getattr(self, "_trainer", None)
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def _class_name(self) -> str | None:
        if self.class_name:
            return self.class_name
        category = getattr(self._datamodule(), "category", None)
        return category.replace("_", " ") if isinstance(category, str) and category else None

    @property
    def detector(self):
        if self.model is None:
            self.setup()
        return self.model.detector

    def forward(self, batch: torch.Tensor, *args, **kwargs):
        """Pre-processor, zsad (the batch is one group), post-processor: anomalib's inference path."""
        if self.model is None:
            self.setup()
        return super().forward(batch, *args, **kwargs)

    # -- what anomalib asks of a model ----------------------------------------------------------------------------
    @property
    def learning_type(self) -> LearningType:
        return LearningType.ZERO_SHOT

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def configure_optimizers() -> None:
        return None

    def training_step(self, batch: Batch, *args, **kwargs):
        raise UsageError(f"{type(self).__name__} is zero-shot: there is nothing to train. Use Engine.test / "
                         f"Engine.predict (Engine.fit only validates for zero-shot models)")

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """No transform: zsad resizes and normalises inside (see the module doc); ``image_size`` is the model's
        ``image_size`` argument, not the pre-processor's."""
        if image_size is not None:
            log.warning("%s resizes inside zsad: set the model's image_size, not the pre-processor's", cls.__name__)
        return PreProcessor()

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        return ZsadPostProcessor()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """anomalib's default test metrics (image and pixel AUROC and F1) plus AUPRO, the third number zero-shot
        papers report."""
        return Evaluator(test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], strict=False),
        ])

    # -- whole sets for transductive methods ---------------------------------------------------------------------
    def _needs_scores(self, stage: str) -> bool:
        """Validation scores are used only by a post-processor that fits normalisation or thresholds, or by
        validation metrics; zsad's own post-processor needs none, so validation then scores nothing."""
        if stage != "val":
            return True
        post = self.post_processor
        fits = post is not None and not isinstance(post, ZsadPostProcessor) and (
            not isinstance(post, PostProcessor) or post.enable_normalization or post.enable_thresholding)
        return fits or bool(self.evaluator is not None and len(self.evaluator.val_metrics))

    def _keeps_decisions(self) -> bool:
        """Labels and masks go out as zsad made them unless a post-processor thresholds by itself."""
        post = self.post_processor
        return post is None or isinstance(post, ZsadPostProcessor) or (
            isinstance(post, PostProcessor) and not post.enable_thresholding)

    def _start(self, stage: str) -> None:
        self._stored, self._paths = None, {}
        if self._needs_scores(stage) and self.detector.method.transductive:
            self._store(stage)

    def _store(self, stage: str) -> None:
        """Read the stage's dataloaders once and score each as one group, keeping the results by (loader, batch)."""
        loaders_name, limits_name = _STAGES[stage]
        loaders = getattr(self.trainer, loaders_name)
        loaders = [loaders] if isinstance(loaders, DataLoader) else list(loaders or [])
        limits = list(getattr(self.trainer, limits_name, None) or [float("inf")] * len(loaders))
        self._stored = {}
        transform = getattr(self.pre_processor, "transform", None)
        for index, (loader, limit) in enumerate(zip(loaders, limits)):
            images, keys = [], []
            for number, batch in enumerate(_again(loader)):
                if number >= limit:
                    break
                pixels = transform(batch.image) if transform is not None else batch.image
                images.extend(to_pil(pixels))
                keys.append(((index, number), len(pixels)))
                self._paths[(index, number)] = _paths(batch)
            if not images:
                continue
            log.info("zsad: scoring the %d %s images together (method %s scores a set jointly)", len(images), stage,
                     self.method)
            results = score_together(self.detector, images, desc=f"zsad {self.method} ({stage} set)",
                                     progress=self.progress)
            start = 0
            for key, count in keys:
                self._stored[key] = results[start:start + count]
                start += count

    def _stored_results(self, batch: Batch, batch_idx: int, dataloader_idx: int) -> list:
        key = (dataloader_idx, batch_idx)
        results = self._stored.pop(key, None) if self._stored is not None else None
        if results is None or len(results) != len(batch.image) or self._paths.get(key) != _paths(batch):
            raise UsageError(f"batch {batch_idx} of dataloader {dataloader_idx} is not the one scored when the set "
                             f"was read (shuffled or changing dataloader?); zsad's {self.method} needs a fixed order")
        return results

    def _predict(self, batch: Batch, batch_idx: int, dataloader_idx: int) -> Batch:
        if self._stored is not None:
            results = self._stored_results(batch, batch_idx, dataloader_idx)
        else:
            results = self.model.score(batch.image)
        predictions = inference_batch(results, batch.image.device)
        if not self._keeps_decisions():
            predictions = predictions._replace(pred_label=None, pred_mask=None)
        return batch.update(**predictions._asdict())

    def on_validation_epoch_start(self) -> None:
        self._start("val")

    def on_test_epoch_start(self) -> None:
        self._start("test")

    def on_predict_epoch_start(self) -> None:
        self._start("predict")

    def on_validation_epoch_end(self) -> None:
        self._stored = None

    def on_test_epoch_end(self) -> None:
        self._stored = None

    def on_predict_epoch_end(self) -> None:
        self._stored = None

    def val_dataloader(self) -> list:
        """No validation images of its own. ``Engine.predict`` validates zero-shot models before predicting, also
        when given only a folder (``anomalib predict --data DIR``); a datamodule's validation set takes precedence."""
        return []

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0, *args, **kwargs):
        if not self._needs_scores("val"):
            return batch
        return self._predict(batch, batch_idx, dataloader_idx)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0, *args, **kwargs):
        return self._predict(batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0):
        return self._predict(batch, batch_idx, dataloader_idx)


def _again(loader: DataLoader) -> DataLoader:
    """The same batches in the same order through a loader of their own: Lightning's prediction loop wraps the batch
    sampler in one holding a single shared iterator (and persistent workers keep one too), which reading the
    loader here would exhaust under the running loop."""
    batch_sampler = getattr(loader.batch_sampler, "_batch_sampler", loader.batch_sampler)
    return DataLoader(loader.dataset, batch_sampler=batch_sampler, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers)


def _paths(batch: Batch) -> list[str] | None:
    paths = getattr(batch, "image_path", None)
    return [str(p) for p in paths] if paths is not None else None


class Zsad(ZsadModule):
    """Any registered zsad method by name (``zsad models``), e.g. ``method="anomalydino"``; its options go in
    ``options``."""

    def __init__(self, method: str = "auto", **kwargs) -> None:
        from zsad.methods import method_class

        method_class(method)  # an unknown name is refused now, listing the known ones
        super().__init__(**kwargs)
        self.method = method


class MuSc(ZsadModule):
    """MuSc (ICLR 2024): the test set's images score each other's patches (LNAMD, mutual scoring, RsCIN). Needs at
    least 5 images in a set."""

    method = "musc"


class Auto(ZsadModule):
    """zsad's default: MuSc fused with ``clip`` when a set has at least 5 images, ``clip`` alone otherwise."""

    method = "auto"


class Clip(ZsadModule):
    """Training-free CLIP: state x template prompt ensembles against value-value patch tokens; one image at a
    time."""

    method = "clip"


class AnomalyClip(ZsadModule):
    """AnomalyCLIP (ICLR 2024): learned object-agnostic prompts, given as an adapter folder (``adapter``: made by
    ``zsad train-prompts`` or ``zsad adapters import-anomalyclip``)."""

    method = "anomalyclip"

    def __init__(self, adapter: str, **kwargs) -> None:
        kwargs["options"] = {**(kwargs.get("options") or {}), "adapter": str(adapter)}
        super().__init__(**kwargs)
        self.adapter = str(adapter)


class ReferenceScoring(ZsadModule):
    """Few-shot: every image is scored against ``k_shot`` known-good reference images (``zsad.create(method,
    references=...)``; with ``musc`` or ``auto`` a set's images also score each other). The references come from
    ``few_shot_source`` (a folder of good images) or else from the datamodule's normal train images, chosen with
    ``seed`` by ``draw`` as ``zsad evaluate --reference-shots K --reference-draw DRAW`` chooses them (``slice``:
    AnomalyDINO's protocol, ``random``), so the same files on MVTec AD."""

    def __init__(self, method: str = "musc", k_shot: int = 1, few_shot_source: str | None = None, seed: int = 0,
                 draw: str = "slice", **kwargs) -> None:
        super().__init__(**kwargs)
        if k_shot < 1:
            raise UsageError(f"k_shot must be at least 1, got {k_shot}")
        self.method = method
        self.k_shot = k_shot
        self.few_shot_source = str(few_shot_source) if few_shot_source else None
        self.seed = seed
        self.draw = draw
        self.reference_files: list[Path] = []

    @property
    def learning_type(self) -> LearningType:
        return LearningType.FEW_SHOT

    def _create_options(self) -> dict[str, Any]:
        self.reference_files = self._references()
        log.info("zsad: %d reference images: %s", len(self.reference_files),
                 ", ".join(str(p) for p in self.reference_files))
        return {"references": self.reference_files}

    def _references(self) -> list[Path]:
        from zsad.methods.reference.shots import draw_references

        if self.few_shot_source:
            from zsad.data.images import discover_images

            normal = [Path(item.path) for item in discover_images([self.few_shot_source])]
            category = Path(self.few_shot_source).name
        else:
            data = getattr(self._datamodule(), "train_data", None)
            samples = getattr(data, "samples", None)
            if samples is None:
                raise UsageError("ReferenceScoring needs reference images: pass few_shot_source=FOLDER, or a "
                                 "datamodule with a train split of normal images")
            normal = [Path(p) for p, y in zip(samples["image_path"], samples["label_index"]) if int(y) == 0]
            category = str(getattr(self._datamodule(), "category", "") or "")
        return draw_references(_Normal(normal), category, self.k_shot, self.seed, self.draw)


class _Normal:
    """A list of normal images seen as a zsad dataset's train split (what :func:`draw_references` reads)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def samples(self, category: str, split: str) -> list[Any]:
        del category, split
        return [_Sample(p) for p in self.paths]


class _Sample:
    label = 0

    def __init__(self, path: Path) -> None:
        self.image_path = path


__all__ = ["AnomalyClip", "Auto", "Clip", "MuSc", "ReferenceScoring", "Zsad", "ZsadModule", "ZsadPostProcessor"]
