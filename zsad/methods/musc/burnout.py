"""Neighbour burnout: how a patch's mutual score grows when its nearest images are skipped (issue 25).

MuSc scores a patch by the mean of its k smallest distances to the other images (:mod:`.msm`). Skip the patch's t
nearest images first and call that mean ``s_t``. A normal patch has look-alikes everywhere, so ``s_t`` grows slowly
and alike for every patch; a defect repeated on t* images has exactly t* look-alikes, so its ``s_t`` jumps once
they are used up (CoDeGraph, arXiv 2510.10456, calls it "neighbour burnout"; no code is public, this is written from
the idea). The distances are averaged over MuSc's (r, block) passes, and each ``s_t`` is z-scored over the batch's
patches (median and MAD of a fixed sample): a flat curve is a normal (or a one-off) patch, a rising one a patch
whose twins hide it.

Works on the ``[n, L, R]`` max-cosine table each MSM pass already builds (rows of this rank's images, a column per
reference image, ``-inf`` where a row may not look: itself), so nothing is recomputed; cost: an addition per pass and
one top-k over the table at the end, small next to the pair products that filled it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: patches whose z-curves set the batch's median and spread (a fixed sample: the same on any number of ranks)
SAMPLE_PATCHES = 16384
#: rows of the table processed at once (bounds the top-k's memory to ``chunk * L * (k + T)`` floats)
ROW_CHUNK = 8
#: a normal distribution's standard deviation per unit of its median absolute deviation
MAD_TO_SIGMA = 1.4826


def median_and_mad(sample: Tensor) -> tuple[Tensor, Tensor]:
    """Median and median absolute deviation along dim 0: the batch's robust centre and spread (a repeated defect's
    patches must not widen the yardstick they are measured with)."""
    median = sample.median(dim=0).values
    return median, (sample - median).abs().median(dim=0).values


def skip_grid(references: int, k: int, max_fraction: float) -> list[int]:
    """Skip counts t >= 1 tried: every t up to 8, then about 20 % apart, up to the largest t with
    ``t <= max_fraction * references`` and ``t + k <= references`` (k distances must remain)."""
    top = min(references - k, int(max_fraction * references))
    if top < 1:
        return []
    grid = set(range(1, min(8, top) + 1))
    value = 8.0
    while value < top:
        value *= 1.2
        grid.add(min(top, int(round(value))))
    grid.add(top)
    return sorted(grid)


def sample_mask(first: int, rows: int, length: int, total_rows: int, budget: int = SAMPLE_PATCHES) -> Tensor:
    """``[rows, L]`` bool: patches of images ``first .. first + rows`` (of ``total_rows``) in the batch's fixed sample
    (every s-th patch of the whole batch, s chosen so that at most ``budget`` are taken)."""
    stride = max(1, math.ceil(total_rows * length / budget))
    index = (torch.arange(first, first + rows)[:, None] * length + torch.arange(length)[None, :])
    return index % stride == 0


class BurnoutCurves:
    """Burnout curves of this rank's rows (module doc), from the pass-averaged distance table.

    Each pass's ``[n, L, R]`` max-cosine table is turned into distances and added up (one table more in memory, the
    size of the one mutual scoring already holds); :meth:`burnout` then sorts the mean table once. Averaging the
    distances over the (r, block) passes before skipping, rather than skipping in every pass, costs one top-k
    instead of one per pass, and steadies the curves the same way.

    Args:
        rows, length: this rank's images and patches per image.
        references: valid reference columns per row (N - 1 for an exact table).
        k: MuSc's number of averaged distances (``floor(top_fraction * references)``, at least 1).
        first, total_rows: this rank's first image in the group and the group's size (for the fixed sample).
        max_fraction: the largest share of the references a repeated pattern may cover.
        comm: a :class:`zsad.distributed.Dist` when the group is spread over ranks (the sample is gathered), else None.
    """

    def __init__(self, rows: int, length: int, references: int, k: int, *, first: int = 0,
                 total_rows: int | None = None, max_fraction: float = 0.6, comm=None) -> None:
        self.k = k
        self.grid = skip_grid(references, k, max_fraction)
        self.steps = torch.tensor([0, *self.grid])
        self.sample = sample_mask(first, rows, length, total_rows if total_rows is not None else rows)
        self.comm = comm
        self.table: Tensor | None = None
        self.passes = 0
        self._z: Tensor | None = None

    @property
    def usable(self) -> bool:
        """False when the batch is too small for any skip (no burnout can be seen)."""
        return bool(self.grid)

    @torch.no_grad()
    def add(self, table: Tensor) -> None:
        """Add one MSM pass: its ``[n, L, R]`` max-cosine table, ``-inf`` where a row may not look."""
        dist = (2.0 - 2.0 * table).clamp_min(0.0).sqrt()  # -inf cosines -> inf distances
        if self.table is None:
            self.table = dist
        else:
            self.table += dist
        self.passes += 1
        self._z = None

    def mean_table(self) -> Tensor:
        """``[n, L, R]`` pass-averaged distances (``inf`` where a row may not look)."""
        return self.table / max(self.passes, 1)

    @torch.no_grad()
    def skip_means(self, table: Tensor) -> Tensor:
        """``[n, L, 1 + len(grid)]`` s_t from an ``[n, L, R]`` distance table (on the table's device)."""
        n, length, _ = table.shape
        width = self.k + int(self.steps[-1])
        out = torch.empty(n, length, len(self.steps), dtype=torch.float32, device=table.device)
        steps = self.steps.to(table.device)
        for s in range(0, n, ROW_CHUNK):
            near = table[s : s + ROW_CHUNK].topk(width, dim=-1, largest=False).values  # ascending
            cum = torch.nn.functional.pad(near.cumsum(-1), (1, 0))
            out[s : s + ROW_CHUNK] = (cum[..., steps + self.k] - cum[..., steps]) / self.k
        return out

    def sampled(self, values: Tensor) -> Tensor:
        """The entries of ``[n, L, ...]`` per-patch ``values`` at the group's fixed sample of patches, gathered from
        every rank (the same on all)."""
        mine = values[self.sample.to(values.device)].float().cpu()
        every = self.comm.all_gather_tensors(mine, "sharing burnout statistics") if self.comm is not None else [mine]
        return torch.cat(every)

    def z(self) -> Tensor:
        """``[n, L, 1 + len(grid)]`` z-curves (column 0: MuSc's score of the mean table, z-scored); each skip count
        is z-scored by the median and MAD-based spread of the group's fixed sample of patches."""
        if self._z is None:
            if self.table is None:
                raise RuntimeError("no mutual-scoring pass was added")
            means = self.skip_means(self.mean_table()).cpu()
            sample = self.sampled(means)
            median, mad = median_and_mad(sample)
            spread = (mad * MAD_TO_SIGMA).clamp_min(1e-12)
            self._z = (means - median) / spread
        return self._z

    def burnout(self, knee: float = 0.8) -> tuple[Tensor, Tensor, Tensor]:
        """Per patch, each ``[n, L]``: ``gain`` (the largest rise of z_t over z_0, t >= 1), ``level`` (the highest
        z_t) and ``twins``: the first t whose rise reaches ``knee`` of the gain. ``s_t`` averages k distances, so
        while twins are skipped it climbs in a ramp and once they are used up it flattens: that t counts them,
        give or take a grid step. A normal patch's curve creeps up to the end of the grid, so its t is large and
        matches no group of images (:func:`.repeats.find_patterns` uses that). (The knee farthest above the chord
        was tried: it also finds small bumps of normal curves, which then look like small groups.)"""
        z = self.z()
        rise = z[..., 1:] - z[..., :1]
        gain = rise.max(dim=-1).values
        first = (rise >= knee * gain[..., None]).float().argmax(dim=-1)
        twins = torch.tensor(self.grid, dtype=torch.long)[first]
        return gain, z[..., 1:].max(dim=-1).values, twins
