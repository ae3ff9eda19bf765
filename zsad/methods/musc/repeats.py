"""Repeated anomalies inside a transductive group: found, reported, and scored as if each occurred once (issue 25).

Why: mutual scoring calls a patch normal when it has look-alikes in the other images. A systematic fault (a worn
tool, a misplaced fixture) puts the same defect on many parts, so each defective patch finds its twins in the other
defective images and scores as normal (the MuSc authors confirm it, xrli-U/MuSc#17). CoDeGraph (arXiv 2510.10456)
filters such "consistent anomalies" out of the references; no code is public, this is written from its idea.

How, on the features and tables mutual scoring already computes (no second backbone pass):

1. **Burnout** (:mod:`.burnout`): per patch, the pass-averaged z-curve of "MuSc's score after skipping the t nearest
   images". ``gain`` = its rise over t = 0; ``twins`` = the t where it peaks.
2. **Candidates**: patches whose gain is an outlier of the batch's gains and whose peak is among the batch's most
   anomalous MuSc scores (:func:`candidate_thresholds`), in images holding at least ``min_patches`` of them.
3. **Rows**: exact distances from those patches (dilated by ``dilate`` patches) to every image, each (r, block) pass
   again: a few hundred rows against the ``N^2`` tiles of mutual scoring, so a few per cent of its time.
4. **Patterns**: a candidate's twin images are its ``twins`` nearest ones by the pass-averaged rows. Image j is a twin
   image of i when at least ``(1 + p) / 2`` of i's candidates name it (p: the share chance would give, the mean of
   twins / (N - 1)); images naming each other are linked; each connected set of >= 2 images is one repeated pattern,
   reported with the 3x3 place of its patches.
5. **Scoring** (``mode="exclude"``): each pass, a member's query patches are scored by MuSc's interval average over
   the images outside its pattern (and always over trusted references): images that carry the same pattern do not
   vouch for each other. Every other patch keeps MuSc's exact score, so a group where nothing repeats is scored
   exactly as before. ``mode="report"`` finds and reports the patterns but keeps MuSc's scores.

Known-good references joining a batch (``trusted``) are never candidates nor twins, and stay among every image's
references, so a repeated defect is always scored against them too.

Under ``torchrun`` with a group spread over ranks, each rank keeps its rows of every table; the fixed sample of
burnout curves, the query vectors, their distance rows and the per-image votes are gathered (small: at most a few
MB), so every rank finds the same patterns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zsad.errors import UsageError
from zsad.methods.musc.burnout import MAD_TO_SIGMA, BurnoutCurves, median_and_mad
from zsad.methods.musc.msm import _lnamd_streamed, _num_kept, musc_patch_scores
from zsad.scoring.regions import grid_cell

log = logging.getLogger(__name__)

#: ``off``: exact MuSc, nothing looked for; ``report``: patterns found and reported, MuSc's scores kept;
#: ``exclude``: found, reported, and their images do not vouch for each other
REPEAT_MODES = ("off", "report", "exclude")


def check_mode(mode: str) -> str:
    if mode not in REPEAT_MODES:
        raise UsageError(f"repeats must be one of {', '.join(REPEAT_MODES)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class RepeatSettings:
    """Detection thresholds (z units of the batch's own patch-score spread) and limits; see the module doc."""

    min_gain: float = 0.5  # a candidate's gain is at least this and an outlier of the batch's gains:
    gain_spread: float = 5.0  # median + gain_spread * (MAD-based spread) of the gains of the fixed sample
    level_quantile: float = 0.99  # and its peak is above this quantile of the batch's MuSc scores (z_0)
    min_level: float = 1.0
    min_patches: int = 1
    max_fraction: float = 0.6  # largest share of the group one pattern may cover
    dilate: int = 1  # patches around the candidates that are re-scored with them (the defect's borders)
    max_queries: int = 4096  # most patches given distance rows (highest gain first)


@dataclass(frozen=True)
class RepeatPattern:
    """One anomaly repeated on several images of a group."""

    pattern: int  # 1, 2, ... within the group, most images first
    members: tuple[int, ...]  # the images that share it (indices in the group's order)
    place: str  # 3x3 grid cell of its patches' centre, e.g. "top left"
    area: float  # share of an image its patches cover (mean over the members)

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class RepeatFindings:
    """What repeat detection found in one group of ``images`` images."""

    images: int
    mode: str
    patterns: list[RepeatPattern] = field(default_factory=list)

    def without_leading(self, count: int) -> RepeatFindings:
        """The findings with the group's first ``count`` images left out (known-good references joined in front:
        never members), indices shifted to the rest."""
        patterns = [RepeatPattern(p.pattern, tuple(m - count for m in p.members), p.place, p.area)
                    for p in self.patterns]
        return RepeatFindings(images=self.images - count, mode=self.mode, patterns=patterns)

    def pattern_of(self, index: int) -> RepeatPattern | None:
        return next((p for p in self.patterns if index in p.members), None)

    def partition(self) -> Tensor:
        """``[images]`` long: the pattern of each image, 0 for none (RsCIN smooths within a label only)."""
        labels = torch.zeros(self.images, dtype=torch.long)
        for p in self.patterns:
            labels[list(p.members)] = p.pattern
        return labels

    def extras(self, index: int) -> dict[str, Any]:
        """Scalar row extras of image ``index``: ``repeat_images`` (how many images of the group share its repeated
        anomaly, itself included; 0: none) and ``group_images`` on every row; ``repeat_pattern``, ``repeat_place``
        and ``repeat_area`` on the rows of images that share one."""
        out: dict[str, Any] = {"group_images": self.images, "repeat_images": 0}
        found = self.pattern_of(index)
        if found is not None:
            out.update(repeat_images=found.size, repeat_pattern=f"R{found.pattern}", repeat_place=found.place,
                       repeat_area=round(found.area, 5))
        return out


@dataclass
class MutualScores:
    """Patch scores of this rank's images (``[n, L]``), MuSc's own (``plain``: the same tensor when nothing was
    re-scored) and, when repeats were looked for, what was found."""

    patch: Tensor
    plain: Tensor
    findings: RepeatFindings | None = None


def describe_repeats(rows: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """One sentence per repeated pattern named in rows' extras (``(group name, extras)`` pairs, e.g. from
    results.jsonl or a run's outcomes), most images first: "12 of 50 images share a repeated anomaly at the center
    (pattern R1)", with " in 'GROUP'" when the group has a name. What ``zsad score`` prints and the demo shows."""
    seen: dict[tuple[str, str], tuple[int, int, str]] = {}
    for group, extras in rows:
        pattern = extras.get("repeat_pattern")
        if pattern:
            seen[(group, str(pattern))] = (int(extras.get("repeat_images", 0)), int(extras.get("group_images", 0)),
                                           str(extras.get("repeat_place", "")))
    lines = []
    for (group, pattern), (count, images, place) in sorted(seen.items(), key=lambda kv: (-kv[1][0], kv[0])):
        of = f" of {images}" if images else ""
        where = f" in '{group}'" if group else ""
        lines.append(f"{count}{of} images share a repeated anomaly at the {place}{where} (pattern {pattern})")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Candidates and their distance rows
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Queries:
    """Patches given distance rows, for the whole group (same on every rank): their image (group index), patch, whether
    it is a candidate (else a neighbour added by dilation), and its twin count."""

    image: Tensor
    patch: Tensor
    candidate: Tensor
    twins: Tensor

    def __len__(self) -> int:
        return int(self.image.numel())


def _local_queries(gain: Tensor, level: Tensor, twins: Tensor, trusted: Tensor, first: int,
                   settings: RepeatSettings, thresholds: tuple[float, float]) -> _Queries:
    """This rank's candidates (in images holding >= ``min_patches`` of them) and their dilated neighbourhoods."""
    n, length = gain.shape
    side = math.isqrt(length)
    cand = (gain >= thresholds[0]) & (level >= thresholds[1]) & ~trusted[:, None]
    cand &= cand.sum(dim=1, keepdim=True) >= settings.min_patches
    grown = cand
    if settings.dilate > 0:
        size = 2 * settings.dilate + 1
        grown = F.max_pool2d(cand.view(n, 1, side, side).float(), size, 1, settings.dilate).view(n, length) > 0
    image, patch = grown.nonzero(as_tuple=True)
    return _Queries(image=image + first, patch=patch, candidate=cand[image, patch], twins=twins[image, patch])


def candidate_thresholds(curves: BurnoutCurves, gain: Tensor, settings: RepeatSettings) -> tuple[float, float]:
    """(gain, level) a candidate must reach, from the group's fixed sample of patches: its gain an outlier of the
    batch's gains, its peak above the ``level_quantile`` of the batch's MuSc scores (z-scored), i.e. it would be
    among the batch's most anomalous patches if its twins did not hide it. Relative thresholds, because how far
    normal patches' curves rise depends on the backbone and the product."""
    sample_gain = curves.sampled(gain)
    sample_z0 = curves.sampled(curves.z()[..., 0])
    median_t, mad = median_and_mad(sample_gain)
    median, spread = float(median_t), float(mad) * MAD_TO_SIGMA
    gain_at = max(settings.min_gain, median + settings.gain_spread * spread)
    level_at = max(settings.min_level, float(torch.quantile(sample_z0, settings.level_quantile)))
    return gain_at, level_at


def _gathered(queries: _Queries, gain: Tensor, first: int, comm, max_queries: int) -> _Queries:
    """The whole group's queries (every rank's, in rank order), cut to ``max_queries`` by gain when too many."""
    mine = torch.stack([queries.image, queries.patch, queries.candidate.long(), queries.twins,
                        (gain[queries.image - first, queries.patch] * 1e6).long()], dim=1)
    every = torch.cat(comm.all_gather_tensors(mine, "sharing repeat candidates")) if comm is not None else mine
    if every.shape[0] > max_queries:
        log.warning("repeats: %d patches to check, keeping the %d with the largest burnout", every.shape[0],
                    max_queries)
        keep = every[:, 4].argsort(descending=True, stable=True)[:max_queries].sort().values
        every = every[keep]
    return _Queries(image=every[:, 0], patch=every[:, 1], candidate=every[:, 2].bool(), twins=every[:, 3])


@torch.no_grad()
def query_rows(layer_tokens: Sequence[Tensor], rs: Sequence[int], queries: _Queries, *, first: int,
               device: torch.device, block: int, z_dtype: torch.dtype, comm=None) -> tuple[Tensor, Tensor]:
    """``[passes, Q, N]`` fp32 distances from each query patch to its nearest patch of every image of the group
    (``inf`` to its own image), per (r, layer) pass in MuSc's order (r outer), and ``[passes, Q, N]`` that patch's
    index. ``layer_tokens`` are this rank's images
    (group indices ``first ..``); features are aggregated exactly as mutual scoring does (:func:`.msm._lnamd_streamed`),
    so the rows are the columns of its tables."""
    n = layer_tokens[0].shape[0]
    mine = (queries.image >= first) & (queries.image < first + n)
    out, at = [], []
    for r in rs:
        for tokens in layer_tokens:
            z = _lnamd_streamed(tokens, r, device, max(1, block), z_dtype)
            vectors = z[queries.image[mine] - first, queries.patch[mine]].to(device, torch.float32)
            if comm is not None:
                vectors = torch.cat(comm.all_gather_tensors(vectors.cpu(), "sharing repeat patches")).to(device)
            cos = torch.empty(len(queries), n, dtype=torch.float32, device=device)
            where = torch.empty(len(queries), n, dtype=torch.long, device=device)
            for s in range(0, n, max(1, block)):
                zb = z[s : s + block].to(device, torch.float32)
                best = torch.einsum("qc,blc->qbl", vectors, zb).max(dim=-1)
                cos[:, s : s + zb.shape[0]], where[:, s : s + zb.shape[0]] = best.values, best.indices
            del z
            if comm is not None:
                cos = torch.cat(comm.all_gather_tensors(cos.cpu(), "sharing repeat rows"), dim=1)
                where = torch.cat(comm.all_gather_tensors(where.cpu(), "sharing repeat rows"), dim=1)
            out.append((2.0 - 2.0 * cos).clamp_min(0.0).sqrt().cpu())
            at.append(where.cpu())
    rows = torch.stack(out)
    rows[:, torch.arange(len(queries)), queries.image] = math.inf
    return rows, torch.stack(at)


# ----------------------------------------------------------------------------------------------------------------
# Patterns
# ----------------------------------------------------------------------------------------------------------------


def _components(edges: Tensor) -> list[list[int]]:
    """Connected components (of >= 2 images) of a symmetric ``[N, N]`` bool adjacency, each sorted."""
    n = edges.shape[0]
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in edges.nonzero().tolist():
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) >= 2]


def _near(twins: Tensor, others: float) -> Tensor:
    """Twin counts compatible with a pattern on ``others`` more images: within a factor 1.5 (the skip grid is 20 %
    coarse, and the knee may fall a step early or late)."""
    return (twins.float() >= others / 1.5 - 1.0) & (twins.float() <= 1.5 * others + 1.0)


def _naming(named: Tensor, owner: Tensor, twins: Tensor, total: int, tests: int,
            min_patches: int) -> Tensor:
    """``[N, N]`` bool: image i names image j when at least (1 + chance) / 2 of i's (voting) candidates have j among
    their twins (chance: the share a random image would get), and i holds at least ``min_patches`` of them."""
    votes = torch.zeros(total, total).index_add_(0, owner, named.float())
    counts = torch.bincount(owner, minlength=total).float()
    chance = torch.zeros(total).index_add_(0, owner, twins.float() / max(tests - 1, 1)) / counts.clamp_min(1)
    names = (votes / counts.clamp_min(1)[:, None] >= ((1.0 + chance) / 2.0)[:, None]) & \
        (counts >= min_patches)[:, None]
    names.fill_diagonal_(False)
    return names


def _at_least(m: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= m)."""
    return sum(math.comb(n, i) * p**i * (1.0 - p) ** (n - i) for i in range(m, n + 1))


def _grown(seed: list[int], names: Tensor, trusted: Tensor, chance: float, tests: int) -> list[int]:
    """The seed and the images enough of its members name: carriers of the pattern whose own patches did not pass as
    candidates. "Enough": so many that a random image (named by each member with probability ``chance``) gets there
    with probability below 0.5 / ``tests`` (binomial tail: half a wrong member expected over the whole group); a
    seed too small for that does not grow."""
    size = len(seed)
    needed = next((m for m in range(1, size + 1) if _at_least(m, size, chance) <= 0.5 / max(tests, 1)), None)
    if needed is None:
        return seed
    votes = names[seed].sum(dim=0)
    extra = ((votes >= needed) & ~trusted).nonzero(as_tuple=True)[0].tolist()
    return sorted(set(seed) | set(extra))


@dataclass
class _Found:
    members: list[int]
    voters: Tensor  # [c] bool over the candidates: those of the members that voted for it
    pairs: int  # member pairs that name each other: how strongly the set holds together


def _found_patterns(rows: Tensor, queries: _Queries, total: int, trusted: Tensor,
                    settings: RepeatSettings) -> list[_Found]:
    cand = queries.candidate.nonzero(as_tuple=True)[0]
    if cand.numel() == 0:
        return []
    mean_rows = rows.mean(dim=0)[cand]  # [c, N]
    mean_rows[:, trusted] = math.inf  # trusted references are never twins
    owner, twins = queries.image[cand], queries.twins[cand]
    tests = int((~trusted).sum())
    largest = max(2, int(settings.max_fraction * tests) + 1)
    order = mean_rows.argsort(dim=1, stable=True)
    named = torch.zeros(mean_rows.shape, dtype=torch.bool)
    named.scatter_(1, order, torch.arange(total)[None, :] < twins[:, None])
    found = []
    for hypothesis in sorted(set(twins.tolist())):
        voting = _near(twins, hypothesis)
        names = _naming(named[voting], owner[voting], twins[voting], total, tests, settings.min_patches)
        for seed in _components(names & names.T):
            members = _grown(seed, names, trusted, min(1.0, hypothesis / max(tests - 1, 1)), tests)
            if len(members) <= largest and bool(_near(torch.tensor([len(members) - 1]), hypothesis)):
                voters = torch.zeros(queries.candidate.shape, dtype=torch.bool)
                voters[cand[voting & torch.isin(owner, torch.tensor(seed))]] = True
                pairs = int((names & names.T)[members][:, members].sum()) // 2
                found.append(_Found(members, voters, pairs))
    # overlapping sets: the one whose members name each other most wins, not the largest. At a hypothesis above the
    # true count, good images that happen to name each other join the carriers into a looser, larger set (N = 200:
    # 50 carriers + 14 good images, a quarter as many mutual pairs as the 50 carriers alone)
    found.sort(key=lambda f: (-f.pairs, -len(f.members), -int(f.voters.sum()), f.members[0]))
    chosen: list[_Found] = []
    taken: set[int] = set()
    for f in found:
        if not taken.intersection(f.members):
            taken.update(f.members)
            chosen.append(f)
    return chosen


def find_patterns(rows: Tensor, queries: _Queries, total: int, side: int, trusted: Tensor,
                  settings: RepeatSettings) -> tuple[list[RepeatPattern], list[Tensor]]:
    """Repeated patterns from the candidates' twin images (module doc, step 4), with the candidates that voted for
    each (``[Q]`` bool masks over the queries).

    Each twin count t seen among the candidates is a hypothesis "a pattern on t + 1 images": only the candidates
    whose own twin count is compatible vote (so an image's unrelated candidates do not dilute its votes); images
    naming each other form a seed, which takes in the images nearly all its members name (:func:`_grown`); the
    set counts only if its size is compatible with t too (normal patches of images that happen to name each other
    creep up to the end of the skip grid instead of burning out at their number). Of overlapping sets, the one
    whose members name each other most wins; an image belongs to one pattern at most."""
    patterns, voters = [], []
    for f in _found_patterns(rows, queries, total, trusted, settings):
        where = queries.patch[f.voters]
        y, x = (where // side).float().mean() + 0.5, (where % side).float().mean() + 0.5
        area = float(f.voters.sum()) / (len(f.members) * side * side)
        patterns.append(RepeatPattern(pattern=len(patterns) + 1, members=tuple(f.members),
                                      place=grid_cell(float(x), float(y), side, side), area=area))
        voters.append(f.voters)
    return patterns, voters


def twin_queries(nearest: Tensor, queries: _Queries, patterns: Sequence[RepeatPattern], voters: Sequence[Tensor],
                 side: int, dilate: int) -> _Queries:
    """Query patches for the members that have none (grown into a pattern): where the pattern's voting candidates
    find their nearest patch in that member (the most frequent over the passes), dilated like the candidates."""
    have = set(queries.image.tolist())
    image, patch = [], []
    for pattern, vote in zip(patterns, voters):
        spots = nearest[:, vote].mode(dim=0).values  # [c, N]: each voter's nearest patch in every image
        for member in pattern.members:
            if member in have:
                continue
            grid = torch.zeros(side * side)
            grid[spots[:, member]] = 1.0
            if dilate > 0:
                grid = F.max_pool2d(grid.view(1, 1, side, side), 2 * dilate + 1, 1, dilate).flatten()
            where = grid.nonzero(as_tuple=True)[0]
            image.append(torch.full_like(where, member))
            patch.append(where)
    if not image:
        return _Queries(*(torch.empty(0, dtype=torch.long) for _ in range(2)), torch.empty(0, dtype=torch.bool),
                        torch.empty(0, dtype=torch.long))
    image_t, patch_t = torch.cat(image), torch.cat(patch)
    return _Queries(image_t, patch_t, torch.zeros_like(image_t, dtype=torch.bool), torch.zeros_like(image_t))


def excluded_scores(rows: Tensor, queries: _Queries, patterns: Sequence[RepeatPattern], total: int,
                    top_fraction: float) -> tuple[Tensor, Tensor]:
    """MuSc's interval average of the members' query patches over the images outside their pattern, per pass, averaged
    (module doc, step 5). Returns the query indices re-scored and their scores."""
    label = torch.zeros(total, dtype=torch.long)
    for p in patterns:
        label[list(p.members)] = p.pattern
    chosen = (label[queries.image] > 0).nonzero(as_tuple=True)[0]
    if chosen.numel() == 0:
        return chosen, torch.empty(0)
    own = label[queries.image[chosen]]
    blocked = own[:, None] == label[None, :]  # same pattern (itself included)
    allowed = total - blocked.sum(dim=1)
    kept = torch.tensor([_num_kept(int(a), top_fraction) for a in allowed.tolist()])
    d = rows[:, chosen].masked_fill(blocked[None], math.inf).sort(dim=-1).values  # [P, q, N] ascending
    take = torch.arange(total)[None, None, :] < kept[None, :, None]
    scores = torch.where(take, d, torch.zeros_like(d)).sum(dim=-1) / kept[None, :].float()
    return chosen, scores.double().mean(dim=0).float()


# ----------------------------------------------------------------------------------------------------------------
# The whole thing
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def repeat_aware_scores(layer_tokens: Sequence[Tensor], *, rs: Sequence[int] = (1, 3, 5), top_fraction: float = 0.3,
                        block: int = 8, device: torch.device | str | None = None, progress: bool = False,
                        z_dtype: torch.dtype = torch.float32, comm=None, counts: Sequence[int] | None = None,
                        trusted: Tensor | None = None, mode: str = "exclude",
                        settings: RepeatSettings | None = None) -> MutualScores:
    """MuSc's exact patch scores (:func:`.msm.musc_patch_scores`) with repeated anomalies found and, for
    ``mode="exclude"``, re-scored without their twins. ``comm``/``counts``: a group spread over ranks, as for
    ``musc_patch_scores``; ``trusted``: ``[N]`` bool over the whole group, known-good images (never candidates nor
    twins, always references). Returns this rank's ``[n, L]`` rows and the findings (the same on every rank)."""
    check_mode(mode)
    settings = settings or RepeatSettings()
    layers = list(layer_tokens)
    n, length = layers[0].shape[:2]
    across = comm is not None and comm.active
    total = sum(counts) if across else n
    first = sum(counts[: comm.rank]) if across else 0
    trusted = torch.zeros(total, dtype=torch.bool) if trusted is None else trusted.to("cpu", torch.bool)
    dev = torch.device(device) if device is not None else layers[0].device
    k = _num_kept(total - 1, top_fraction)
    curves = BurnoutCurves(n, length, total - 1, k, first=first, total_rows=total,
                           max_fraction=settings.max_fraction, comm=comm if across else None)
    plain = musc_patch_scores(layers, rs, top_fraction, block, device=dev, progress=progress, z_dtype=z_dtype,
                              comm=comm, counts=counts, observe=curves.add if curves.usable else None)
    findings = RepeatFindings(images=total, mode=mode)
    if not curves.usable:
        return MutualScores(plain, plain, findings)
    gain, level, twins = curves.burnout()
    thresholds = candidate_thresholds(curves, gain, settings)
    curves.table = None  # the mean distance table is not needed any more
    local = _local_queries(gain, level, twins, trusted[first : first + n], first, settings, thresholds)
    queries = _gathered(local, gain, first, comm if across else None, settings.max_queries)
    if not bool(queries.candidate.any()):
        return MutualScores(plain, plain, findings)
    rows, nearest = query_rows(layers, rs, queries, first=first, device=dev, block=block, z_dtype=z_dtype,
                               comm=comm if across else None)
    side = math.isqrt(length)
    findings.patterns, voters = find_patterns(rows, queries, total, side, trusted, settings)
    log.info("repeats: %s", "; ".join(f"{p.size} images share a repeated anomaly at the {p.place}"
                                       for p in findings.patterns) or "none found")
    if mode != "exclude" or not findings.patterns:
        return MutualScores(plain, plain, findings)
    extra = twin_queries(nearest, queries, findings.patterns, voters, side, settings.dilate)
    if len(extra):
        more, _ = query_rows(layers, rs, extra, first=first, device=dev, block=block, z_dtype=z_dtype,
                             comm=comm if across else None)
        queries = _Queries(*(torch.cat([a, b]) for a, b in zip(
            (queries.image, queries.patch, queries.candidate, queries.twins),
            (extra.image, extra.patch, extra.candidate, extra.twins))))
        rows = torch.cat([rows, more], dim=1)
    chosen, scores = excluded_scores(rows, queries, findings.patterns, total, top_fraction)
    patch = plain.clone()
    mine = (queries.image[chosen] >= first) & (queries.image[chosen] < first + n)
    patch[queries.image[chosen][mine] - first, queries.patch[chosen][mine]] = scores[mine].to(patch.dtype)
    return MutualScores(patch, plain, findings)
