"""The one scoring runner: inputs -> decode once -> method -> raw outputs -> decision -> outcomes.

Every front end uses it: ``zsad score`` and ``zsad evaluate`` (through their sinks), the demo, ``--threshold-from``
and the Python API (``Detector.score`` / ``Detector.stream``). It is the single place that knows about chunks,
groups, good images and resume:

- **Identity.** An input's identity (``Source.key``) is its resolved real path; the path as the user spelled it is
  kept for rows. Keys in ``done`` (a resumed run's finished rows, scored or failed) are never reported again.
- **Joint or independent, decided here and only here**: methods that may score jointly (musc, auto, references
  joining) have each group's features extracted chunk by chunk, then :meth:`Method.mode` of the group's size says
  joint (one joint pass), independent (e.g. ``auto`` with fewer than 5 images: clip alone) or too few (the one
  :class:`~zsad.errors.BatchTooSmallError`); independent methods (clip, anomalyclip) stream chunk by chunk.
- **Groups.** ``group_by="folder"`` groups by the real parent folder, so two inputs' same-named subfolders never mix.
- **Good images** (:class:`GoodImages`) set the thresholds: scored once for independent methods, joined to every
  group for transductive ones (whose scores are batch-relative); a good image that is also an input joins once.
- **Decode once.** Each image is decoded once; with ``keep_images`` the decoded pixels ride along with the outcome
  (for overlays). Transductive groups keep them in memory up to a budget and spill the rest to raw-pixel files in a
  temporary folder (no second decode).
- **Bad input never stops the run**: an unreadable file, or NaN/inf in a method's numbers, is an error outcome.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from zsad.data.images import DEFAULT_MAX_PIXELS, InputImage, discover_images, load_image
from zsad.decisions import GoodThresholds, Thresholds, check_unit, decide, thresholds_from_good
from zsad.distributed import Dist, assign_groups, balanced_slices
from zsad.errors import BatchTooSmallError, ImageError, ScoreError, UsageError
from zsad.methods.base import JOINT, Share
from zsad.types import AnomalyResult, RawOutput

log = logging.getLogger(__name__)

GROUP_BY = ("none", "folder")
#: Decoded images a transductive group keeps in memory for its overlays before spilling to disk.
DEFAULT_IMAGE_BUDGET_BYTES = 2 * 1024**3


def identity(path: str | os.PathLike) -> str:
    """The identity of a file: its resolved real path (symlinks, ``..`` and relative spellings collapse)."""
    return os.path.realpath(os.fspath(path))


@dataclass(frozen=True)
class Source:
    """One input: a file (``path`` as the user spelled it) or an in-memory image (``path`` None)."""

    key: str
    path: str | None = None
    image: Image.Image | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Source:
        return cls(key=identity(path), path=os.fspath(path))

    @property
    def label(self) -> str:
        """How messages name it."""
        return self.path if self.path is not None else self.key


@dataclass
class Outcome:
    """What became of one input: a decided ``result`` (with the decoded ``image`` when kept) or an ``error``."""

    source: Source
    result: AnomalyResult | None = None
    error: str | None = None
    image: Image.Image | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def sources_from_inputs(inputs: Sequence[str | os.PathLike] | Sequence[InputImage]) -> list[Source]:
    """Files, folders and globs (or already discovered images) as sources, one per real file, in input order."""
    found = inputs if inputs and isinstance(inputs[0], InputImage) else discover_images(list(inputs))
    sources, seen = [], set()
    for item in found:
        source = Source.from_file(item.path)
        if source.key not in seen:
            seen.add(source.key)
            sources.append(source)
    return sources


def as_sources(images: Iterable[str | os.PathLike | Image.Image | Source]) -> list[Source]:
    """Paths, PIL images or sources as sources (in-memory images get keys ``memory:<index>``)."""
    out = []
    for i, item in enumerate(images):
        if isinstance(item, Source):
            out.append(item)
        elif isinstance(item, Image.Image):
            out.append(Source(key=f"memory:{i}", image=item.convert("RGB")))
        else:
            out.append(Source.from_file(item))
    return out


def group_sources(sources: Sequence[Source], group_by: str) -> list[tuple[str, list[Source]]]:
    """(name, sources) of each joint-scoring group: all together, or one per real parent folder."""
    if group_by not in GROUP_BY:
        raise UsageError(f"unknown --group-by {group_by!r} (use {' or '.join(GROUP_BY)})")
    if group_by == "none":
        return [("", list(sources))] if sources else []
    groups: dict[str, list[Source]] = {}
    for source in sources:
        groups.setdefault(os.path.dirname(source.key), []).append(source)
    return list(groups.items())


class DetectorLike(Protocol):
    """What the runner needs of a detector (:class:`zsad.detector.Detector`, which builds runners over itself)."""

    method: Any
    batch_size: int
    thresholds: Thresholds


class _ImageStore:
    """Decoded images of one group, kept for the outcomes: in memory up to a budget, then as raw pixels on disk."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.memory: dict[int, Image.Image] = {}
        self.spilled: dict[int, Path] = {}
        self._folder: tempfile.TemporaryDirectory | None = None

    def put(self, index: int, image: Image.Image) -> None:
        size = image.width * image.height * 3
        if self.used + size <= self.budget:
            self.memory[index] = image
            self.used += size
            return
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="zsad-images-")
        path = Path(self._folder.name) / f"{index}.npy"
        np.save(path, np.asarray(image))
        self.spilled[index] = path

    def pop(self, index: int) -> Image.Image | None:
        if index in self.memory:
            image = self.memory.pop(index)
            self.used -= image.width * image.height * 3
            return image
        path = self.spilled.pop(index, None)
        if path is None:
            return None
        image = Image.fromarray(np.load(path))
        path.unlink()
        return image

    def close(self) -> None:
        self.memory.clear()
        if self._folder is not None:
            self._folder.cleanup()


@dataclass
class _Loaded:
    """A group after decoding and feature extraction: the readable sources, their sizes, feature chunks, and the
    error outcomes of the unreadable ones."""

    kept: list[Source] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    chunks: list[Any] = field(default_factory=list)
    errors: list[Outcome] = field(default_factory=list)


@dataclass
class _Joined:
    """Good images' features for one group: what joins it, and which of its own images are good ones too."""

    chunks: list[Any]
    sizes: list[tuple[int, int]]
    shared: set[str]


class GoodImages:
    """Known-good images for thresholds (``--threshold-from``), decoded once.

    Independent methods: scored once here, giving :attr:`thresholds`. Transductive methods: their features are
    kept and join every group (see :meth:`Runner.run`)."""

    def __init__(self, runner: Runner, sources: Sequence[Source], quantile: float) -> None:
        check_unit(quantile, "the good-image quantile")
        self.quantile = quantile
        self.images: list[Image.Image] = []
        self.keys: list[str] = []
        for source in sources:
            try:
                self.images.append(runner.decode(source))
                self.keys.append(source.key)
            except ImageError as exc:
                log.warning("good images: skipping %s: %s", source.label, exc.problem)
        if not self.images:
            raise UsageError("no readable good images")
        self.thresholds: GoodThresholds | None = None
        self._chunks: list[Any] = []
        if runner.transductive:
            self._chunks = [runner.extract(chunk) for chunk in runner.chunks(self.images)]
        else:
            raws = [raw for chunk in runner.chunks(self.images) for raw in runner.raw_independent(chunk)]
            self.thresholds = thresholds_from_good(raws, quantile)

    def joining(self, runner: Runner, keys: set[str]) -> _Joined:
        """The good images to add to a group holding ``keys``: all but those it already holds."""
        shared = keys & set(self.keys)
        sizes = [img.size for key, img in zip(self.keys, self.images) if key not in shared]
        if not shared:
            return _Joined(self._chunks, sizes, shared)
        images = [img for key, img in zip(self.keys, self.images) if key not in shared]
        return _Joined([runner.extract(chunk) for chunk in runner.chunks(images)], sizes, shared)


class Runner:
    """Streams :class:`Outcome` objects for sources; see the module doc for what it guarantees."""

    def __init__(self, detector: DetectorLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 thresholds: Thresholds | None = None, keep_images: bool = False,
                 image_budget_bytes: int = DEFAULT_IMAGE_BUDGET_BYTES) -> None:
        self.method = detector.method
        self.batch_size = detector.batch_size
        self.max_pixels = max_pixels
        self.thresholds = thresholds or detector.thresholds
        self.keep_images = keep_images
        self.image_budget_bytes = image_budget_bytes
        self.good: GoodImages | None = None
        #: called with each group's thresholds from good images: (group name, thresholds)
        self.on_thresholds: Callable[[str, GoodThresholds], None] | None = None

    @property
    def transductive(self) -> bool:
        return self.method.transductive

    # -- steps -------------------------------------------------------------------------------------------------
    def decode(self, source: Source) -> Image.Image:
        if source.image is not None:
            return source.image
        return load_image(source.path, max_pixels=self.max_pixels)

    def chunks(self, items: Sequence) -> Iterator[Sequence]:
        for start in range(0, len(items), self.batch_size):
            yield items[start:start + self.batch_size]

    def extract(self, images: Sequence[Image.Image]) -> Any:
        return self.method.extract(self.method.preprocess(list(images)))

    def raw_independent(self, images: Sequence[Image.Image]) -> list[RawOutput]:
        return list(self.method.raw(self.extract(images), [img.size for img in images]))

    def use_good_images(self, sources: Sequence[Source], quantile: float) -> GoodImages:
        """Decide with thresholds from these known-good images instead of the fixed ones."""
        self.good = GoodImages(self, sources, quantile)
        if self.good.thresholds is not None and self.on_thresholds:
            self.on_thresholds("", self.good.thresholds)
        return self.good

    def _decided(self, source: Source, raw: RawOutput, thresholds: Thresholds,
                 image: Image.Image | None) -> Outcome:
        try:
            result = decide(raw, thresholds, source.path)
        except ScoreError as exc:
            return Outcome(source, error=str(exc))
        return Outcome(source, result=result, image=image if self.keep_images else None)

    # -- the run -----------------------------------------------------------------------------------------------
    def run(self, sources: Sequence[Source], *, group_by: str = "none", done: Container[str] = frozenset(),
            progress: Callable[[int], None] | None = None, dist: Dist | None = None) -> Iterator[Outcome]:
        """Outcomes of every source whose key is not in ``done``, group by group, in input order within a group.

        ``progress(n)`` is called as ``n`` more pending images have been read and passed through the backbone.
        With ``dist`` (several ranks, every rank calling with the same arguments) each rank yields the outcomes of
        its shard only: independent methods split the pending images into balanced contiguous slices; transductive
        methods give whole groups to ranks when there are at least as many groups as ranks
        (:func:`~zsad.distributed.assign_groups`), otherwise every group is scored by all ranks together, each
        holding a contiguous slice of it (:meth:`~zsad.methods.base.Method.raw_across`).
        """
        every = group_sources(sources, group_by)
        several = len(every) > 1
        groups = [(name, group) for name, group in every if not all(s.key in done for s in group)]
        tick = progress or (lambda n: None)
        if dist is not None and dist.active:
            yield from self._sharded(groups, done, several, tick, dist)
            return
        for name, group in groups:
            if self.transductive:
                yield from self._group(name, group, done, several, tick)
            else:
                yield from self._independent([s for s in group if s.key not in done], tick)

    def _sharded(self, groups: list[tuple[str, list[Source]]], done: Container[str], several: bool,
                 tick: Callable[[int], None], dist: Dist) -> Iterator[Outcome]:
        rank, world = dist.rank, dist.world_size
        if not self.transductive:
            pending = [s for _, group in groups for s in group if s.key not in done]
            yield from self._independent(pending[balanced_slices(len(pending), world)[rank]], tick)
            return
        if self.good is not None:
            raise UsageError(f"good images for thresholds with method '{self.method.name}', which scores images "
                             f"relative to their group, are not supported across several processes yet; run them "
                             f"in one process, or use a method that scores images on their own (clip)")
        if len(groups) >= world:
            owners = assign_groups([len(group) for _, group in groups], world)
            for (name, group), owner in zip(groups, owners):
                if owner == rank:
                    yield from self._group(name, group, done, several, tick)
            return
        for name, group in groups:
            yield from self._group_across(name, group[balanced_slices(len(group), world)[rank]], done, several,
                                          tick, dist)

    def _group_across(self, name: str, mine: Sequence[Source], done: Container[str], several: bool,
                      tick: Callable[[int], None], dist: Dist) -> Iterator[Outcome]:
        """A group scored by all ranks together; this rank holds the slice ``mine``."""
        store = _ImageStore(self.image_budget_bytes if self.keep_images else 0)
        try:
            loaded = self._load_group(mine, done, tick, store)
            yield from loaded.errors
            counts = tuple(dist.all_gather_object(len(loaded.kept), "counting a group's images"))
            mode = self.method.mode(sum(counts), spread=True)
            if mode is None:
                if not several:
                    raise self._too_few(sum(counts))
                yield from self._small_group_errors(name, loaded.kept, done, str(self._too_few(sum(counts))))
                return
            features = self.method.combine(loaded.chunks) if loaded.chunks else None
            if mode == JOINT:
                raws = self.method.raw_across(features, loaded.sizes, Share(dist, counts))
            else:  # each rank scores its own images on their own: no collective
                raws = self.method.raw(features, loaded.sizes) if features is not None else iter(())
            if not loaded.kept:
                for _ in raws:  # take part in the group's collectives
                    pass
                return
            for index, (source, raw) in enumerate(zip(loaded.kept, raws)):
                if source.key not in done:
                    yield self._decided(source, raw, self.thresholds, store.pop(index))
        finally:
            store.close()

    def _load_group(self, group: Sequence[Source], done: Container[str], tick: Callable[[int], None],
                    store: _ImageStore) -> _Loaded:
        """Decode and extract a group chunk by chunk (decoded images go to ``store`` for the outcomes)."""
        loaded = _Loaded()
        for chunk in self.chunks(group):
            images = []
            for source in chunk:
                try:
                    images.append(self.decode(source))
                except ImageError as exc:
                    if source.key not in done:
                        loaded.errors.append(Outcome(source, error=exc.problem))
                    continue
                if self.keep_images and source.key not in done:
                    store.put(len(loaded.kept), images[-1])
                loaded.kept.append(source)
                loaded.sizes.append(images[-1].size)
            if images:
                loaded.chunks.append(self.extract(images))
            tick(sum(1 for s in chunk if s.key not in done))
        return loaded

    def _too_few(self, n: int) -> BatchTooSmallError:
        """The group's method scores no group of ``n`` images (its :meth:`~zsad.methods.base.Method.mode` said
        None)."""
        return BatchTooSmallError(self.method.name, self.method.min_batch, n)

    @staticmethod
    def _small_group_errors(name: str, kept: Sequence[Source], done: Container[str], problem: str) -> Iterator[Outcome]:
        for source in kept:  # one small folder must not stop the others
            if source.key not in done:
                yield Outcome(source, error=f"folder '{name}': {problem}")

    def _independent(self, sources: Sequence[Source], tick: Callable[[int], None]) -> Iterator[Outcome]:
        thresholds = self.good.thresholds if self.good and self.good.thresholds else self.thresholds
        for chunk in self.chunks(sources):
            loaded: list[tuple[Source, Image.Image]] = []
            for source in chunk:
                try:
                    loaded.append((source, self.decode(source)))
                except ImageError as exc:
                    yield Outcome(source, error=exc.problem)
            if loaded:
                raws = self.raw_independent([img for _, img in loaded])
                tick(len(loaded))
                for (source, image), raw in zip(loaded, raws):
                    yield self._decided(source, raw, thresholds, image)

    def _group(self, name: str, group: Sequence[Source], done: Container[str], several: bool,
               tick: Callable[[int], None]) -> Iterator[Outcome]:
        """One group of a method that may score jointly: features of the whole group first, then its mode. Finished
        sources still join the group (scores may be joint) but are not reported."""
        joined = self.good.joining(self, {s.key for s in group}) if self.good else None
        if joined and joined.shared:  # good images among the inputs first: their raw outputs set the thresholds
            group = sorted(group, key=lambda s: s.key not in joined.shared)
        at_most = len(group) + (len(joined.sizes) if joined else 0)
        if self.method.mode(at_most) is None:  # too few even if every file reads: refuse before any model work
            if not several:
                raise self._too_few(at_most)
            yield from self._small_group_errors(name, group, done, str(self._too_few(at_most)))
            return
        store = _ImageStore(self.image_budget_bytes if self.keep_images else 0)
        try:
            loaded = self._load_group(group, done, tick, store)
            yield from loaded.errors
            if not loaded.kept:
                return
            extra = joined.chunks if joined else []
            extra_sizes = joined.sizes if joined else []
            count = len(loaded.sizes) + len(extra_sizes)
            mode = self.method.mode(count)
            if mode is None:
                if not several:
                    raise self._too_few(count)
                yield from self._small_group_errors(name, loaded.kept, done, str(self._too_few(count)))
                return
            score = self.method.raw_joint if mode == JOINT else self.method.raw
            raws = score(self.method.combine(extra + loaded.chunks), extra_sizes + loaded.sizes)
            thresholds: Thresholds = self.thresholds
            if joined is not None:
                good_raws = [next(raws) for _ in extra_sizes]
                own = [next(raws) for s in loaded.kept if s.key in joined.shared]
                thresholds = thresholds_from_good(good_raws + own, self.good.quantile)
                if self.on_thresholds:
                    self.on_thresholds(name if several else "", thresholds)
                raws = itertools.chain(own, raws)
            for index, (source, raw) in enumerate(zip(loaded.kept, raws)):
                if source.key in done:
                    continue
                yield self._decided(source, raw, thresholds, store.pop(index))
        finally:
            store.close()
