"""MuSc stage 2, MSM: mutual scoring of unlabeled images (``_MSM.py``, assembled as in ``models/musc.py``).

    mutual_scores(Z, top_fraction, ...)           [N, L, C] -> [N, L]    exact, block-tiled MSM
    mutual_scores_reference(Z, top_fraction)      [N, L, C] -> [N, L]    slow, obviously correct MSM
    sample_references(n, reference_size, seed)   -> [N, R] reference images used by ``reference_size``
    musc_patch_scores(layer_tokens, rs, ...)      per-layer [N, L, C] -> [N, L] mean of the MSM maps over (r, layer)

Li et al., "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring of the Unlabeled
Images", ICLR 2024 (arXiv 2401.16753); official code github.com/xrli-U/MuSc, written from scratch; where paper and
code differ this module follows the code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from zsad.errors import BatchTooSmallError, UsageError
from zsad.methods.musc.lnamd import _check_degree, lnamd

logger = logging.getLogger(__name__)

_LOW_PRECISION = (torch.float16, torch.bfloat16)

# ----------------------------------------------------------------------------------------------------------------
# MSM helpers
# ----------------------------------------------------------------------------------------------------------------


def _num_kept(num_references: int, top_fraction: float) -> int:
    """k of the interval average: floor(top_fraction * (#references)), at least 1.

    Same float expression as the official ``int(patch2image.shape[1] * topmin_max)`` so the floor edge cases agree;
    the official code gives k = 0 (and NaN) for N < 5, here k is raised to 1 (maintainer's suggestion, issue #41).
    """
    return max(1, int(num_references * top_fraction))


def _check_z(Z: Tensor) -> None:
    if Z.dim() != 3:
        raise UsageError(f"Z must be [N, L, C], got shape {tuple(Z.shape)}")
    if not Z.is_floating_point():
        raise UsageError(f"Z must be a floating-point tensor, got {Z.dtype}")
    if Z.shape[0] < 2:
        raise BatchTooSmallError("musc", 2, int(Z.shape[0]))  # mutual scoring itself needs a pair


def _check_fraction(top_fraction: float) -> None:
    if not 0.0 < top_fraction <= 1.0:
        raise UsageError(f"top_fraction must be in (0, 1], got {top_fraction!r}")


def _lower_mean_distance(best_cos: Tensor, k: int) -> Tensor:
    """``[..., R]`` max cosines per reference image -> ``[...]`` mean of the k smallest distances.

    Distance from cosine for unit vectors: d = sqrt(max(2 - 2cos, 0)); d decreases with cos, so the k smallest
    distances are the k largest cosines. Entries of -inf (an image against itself) are never among them when
    k <= R - 1.
    """
    top = best_cos.topk(k, dim=-1).values
    return (2.0 - 2.0 * top).clamp_min(0.0).sqrt().mean(dim=-1)


def _tile_exact(zq: Tensor, zr: Tensor) -> tuple[Tensor, Tensor]:
    """One fp32 GEMM for a (query block, reference block) pair of images.

    Args:
        zq: ``[a, L, C]`` fp32 unit vectors; zr: ``[b, L, C]``.

    Returns:
        ``row [a, L, b]``: max_n cos(zq[i, m], zr[j, n]) (query -> reference direction) and
        ``col [b, L, a]``: max_m cos(zr[j, n], zq[i, m]) (reference -> query), both from the same product.
    """
    a, length, c = zq.shape
    b = zr.shape[0]
    g = (zq.reshape(a * length, c) @ zr.reshape(b * length, c).T).view(a, length, b, length)
    return g.amax(dim=3), g.amax(dim=1).permute(1, 2, 0)


def _mm_wide(a: Tensor, b: Tensor) -> Tensor:
    """``a [M, C] @ b [P, C]^T``; on CUDA with fp16/bf16 operands the output is fp32 when torch supports it."""
    if a.is_cuda and a.dtype in _LOW_PRECISION:
        try:
            return torch.mm(a, b.T, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch without mm(out_dtype=...)
            pass
    return a @ b.T


def _unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2.0 if dtype not in (torch.float32, torch.float64) else 0.0


@dataclass(frozen=True)
class _Screening:
    """How the cheap screening product is computed and how far its cosines may be off.

    ``dtype``: the dtype the blocks are cast to for the product; ``input_unit``: unit roundoff lost on the inputs
    (0 when the stored values are already in ``dtype``; 2^-11 for TF32); ``product``: ``(a [M, C], b [P, C]) ->
    [M, P]``.
    """

    dtype: torch.dtype
    input_unit: float
    product: Callable[[Tensor, Tensor], Tensor] = _mm_wide

    def error_bound(self, out_dtype: torch.dtype, channels: int) -> float:
        """Bound on |screened cos - fp32 cos| for unit vectors, doubled for safety.

        2u_in (both operands rounded) + 3u_out (output rounding, fp16 split-K partial sums) + C*2^-24 (fp32
        accumulation); Higham, "Accuracy and Stability of Numerical Algorithms", Sec. 3.1.
        """
        u_out = _unit_roundoff(out_dtype)
        return 2.0 * (2.0 * self.input_unit + 3.0 * u_out + channels * 2.0**-24) + 1e-6


def _rescore(x: Tensor, y: Tensor, top_v: Tensor, top_i: Tensor, eps: float) -> Tensor:
    """Exact fp32 max cosine from screened candidates, with exact fallback where the screen is in doubt.

    Args:
        x: ``[p, L, C]`` fp32 vectors being scored; y: ``[q, L2, C]`` fp32 candidate images.
        top_v, top_i: ``[p, L, q, t]`` screened cosines and patch indices into ``y[j]``, best first (t <= 2).
        eps: bound on the screening error of ``top_v``.

    Returns:
        ``[p, L, q]`` fp32: max_n cos(x[i, m], y[j, n]). The winner is re-scored in fp32; any other candidate's
        true cosine is <= top_v[..., 1] + eps, so rows where that could beat the winner are recomputed against all
        of ``y[j]`` in fp32 (design musc.md (a)1: screen in low precision, re-score in fp32).
    """
    p, length, _ = x.shape
    q = y.shape[0]
    img = torch.arange(q, device=x.device)
    best = torch.empty(p, length, q, device=x.device, dtype=torch.float32)
    for i in range(p):
        cand = y[img.unsqueeze(0), top_i[i, :, :, 0]]  # [L, q, C]
        best[i] = torch.bmm(cand, x[i].unsqueeze(-1)).squeeze(-1)
    if top_v.shape[-1] < 2:
        return best
    doubt = top_v[..., 1].to(torch.float32) + eps > best
    if bool(doubt.any()):
        ii, mm, jj = doubt.nonzero(as_tuple=True)
        logger.debug("low-precision screen: %d of %d minima recomputed in fp32", ii.numel(), doubt.numel())
        for j in jj.unique().tolist():
            sel = jj == j
            best[ii[sel], mm[sel], j] = (x[ii[sel], mm[sel]] @ y[j].T).amax(dim=1)
    return best


def _tile_screened(zq: Tensor, zr: Tensor, lq: Tensor, lr: Tensor, screen: _Screening) -> tuple[Tensor, Tensor]:
    """Like :func:`_tile_exact`, but the GEMM runs in ``screen.dtype`` and the winners are re-scored in fp32.

    Args:
        zq, zr: ``[a, L, C]``, ``[b, L, C]`` fp32 copies; lq, lr: the same blocks in ``screen.dtype``.

    Returns:
        ``row [a, L, b]`` and ``col [b, L, a]`` max cosines, equal to :func:`_tile_exact` up to fp32 rounding.
    """
    a, length, c = zq.shape
    b = zr.shape[0]
    g = screen.product(lq.reshape(a * length, c), lr.reshape(b * length, c)).view(a, length, b, length)
    eps = screen.error_bound(g.dtype, c)
    t = min(2, length)
    v, i = g.topk(t, dim=3)  # [a, L, b, t]
    row = _rescore(zq, zr, v, i, eps)
    v, i = g.topk(t, dim=1)  # [a, t, b, L]
    col = _rescore(zr, zq, v.permute(2, 3, 0, 1), i.permute(2, 3, 0, 1), eps)
    return row, col


def _choose_screening(Z: Tensor, device: torch.device, low_precision: bool | None) -> _Screening | None:
    """None: exact fp32 products. Otherwise the low-precision screen used for the GEMMs."""
    if low_precision is False:
        return None
    if low_precision is None:
        if device.type != "cuda":
            return None
        if Z.dtype in _LOW_PRECISION:
            return _Screening(dtype=Z.dtype, input_unit=0.0)
        # fp32 on CUDA: exact unless the user switched on TF32 / bf16 internal precision for fp32 matmuls.
        precision = torch.get_float32_matmul_precision()
        if precision == "highest" and not getattr(torch.backends.cuda.matmul, "allow_tf32", False):
            return None
        unit = 2.0**-8 if precision == "medium" else 2.0**-11
        return _Screening(dtype=torch.float32, input_unit=unit)
    dtype = Z.dtype if Z.dtype in _LOW_PRECISION else torch.float16
    return _Screening(dtype=dtype, input_unit=0.0 if Z.dtype == dtype else _unit_roundoff(dtype))


class _Loader:
    """Moves image blocks of Z to the compute device: fp32 copy plus, when screening, a low-precision copy."""

    def __init__(self, Z: Tensor, device: torch.device, screen: _Screening | None) -> None:
        self.Z = Z
        self.device = device
        self.screen = screen

    def __call__(self, index: slice | Tensor) -> tuple[Tensor, Tensor | None]:
        block = self.Z[index].to(self.device)
        exact = block.to(torch.float32)
        low = block.to(self.screen.dtype) if self.screen is not None else None
        return exact, low

    def tile(self, q: tuple[Tensor, Tensor | None], r: tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor]:
        if self.screen is None:
            return _tile_exact(q[0], r[0])
        return _tile_screened(q[0], r[0], q[1], r[1], self.screen)  # type: ignore[arg-type]


def _slice_pair(block: tuple[Tensor, Tensor | None], start: int, stop: int) -> tuple[Tensor, Tensor | None]:
    exact, low = block
    return exact[start:stop], (low[start:stop] if low is not None else None)


# ----------------------------------------------------------------------------------------------------------------
# MSM
# ----------------------------------------------------------------------------------------------------------------


def _circle_order(n: int, seed: int) -> Tensor:
    """``[n]`` int64 (CPU): the image at each position of the circle used for reference sampling."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def sample_references(n: int, reference_size: int, seed: int = 0) -> Tensor:
    """The R reference images each image is scored against when ``reference_size=R < n - 1``.

    A seeded random permutation places the images on a circle; image at position p uses the ceil(R/2) images after
    it and the floor(R/2) before it. Each image's set is therefore a uniformly random R-subset of the others, and
    the sets are (nearly) symmetric, so one GEMM per pair serves both directions.

    Returns:
        ``[n, R]`` int64 (CPU): column c of row i is the c-th reference of image i (forward offsets 1..ceil(R/2),
        then backward offsets 1..floor(R/2)); matches the column order used inside :func:`mutual_scores`.
    """
    if not 1 <= reference_size < n:
        raise UsageError(f"reference_size must be in [1, {n - 1}] for {n} images, got {reference_size}")
    perm = _circle_order(n, seed)
    position = torch.empty_like(perm)
    position[perm] = torch.arange(n)
    ahead, behind = (reference_size + 1) // 2, reference_size // 2
    offsets = torch.cat([torch.arange(1, ahead + 1), -torch.arange(1, behind + 1)])
    return perm[(position.unsqueeze(1) + offsets.unsqueeze(0)) % n]


def _msm_steps(n: int, block: int, reference_size: int | None) -> int:
    """Progress steps of one MSM pass: tiles of the exact path, or images of the sampled one."""
    if reference_size is None or reference_size >= n - 1:
        tiles = -(-n // block)
        return tiles * (tiles + 1) // 2
    return n


def _fill_pairs(table: Tensor, loader: _Loader, block: int, bar, offset: int = 0) -> None:
    """Every pair of the loader's N images, each unordered pair multiplied once: max cosines into
    ``table[:, :, offset:offset + N]`` (row i holds image i against image j at column ``offset + j``)."""
    n = loader.Z.shape[0]
    starts = list(range(0, n, block))
    for qi, qs in enumerate(starts):
        qe = min(n, qs + block)
        zq = loader(slice(qs, qe))
        # Diagonal tile: each unordered pair inside the block once (image i against images i+1..qe-1).
        for i in range(qs, qe - 1):
            row, col = loader.tile(_slice_pair(zq, i - qs, i - qs + 1), _slice_pair(zq, i - qs + 1, qe - qs))
            table[i : i + 1, :, offset + i + 1 : offset + qe] = row
            table[i + 1 : qe, :, offset + i : offset + i + 1] = col
        bar.update()
        for rs in starts[qi + 1 :]:
            re = min(n, rs + block)
            row, col = loader.tile(zq, loader(slice(rs, re)))
            table[qs:qe, :, offset + rs : offset + re] = row
            table[rs:re, :, offset + qs : offset + qe] = col
            bar.update()


def _exact_table_scores(Z: Tensor, k: int, block: int, loader: _Loader, bar, observe=None) -> Tensor:
    """All pairs. Table ``[N, L, N]`` of max cosines on the compute device, -inf on the diagonal; ``observe(table)``
    sees it before it is reduced (repeat detection, :mod:`.burnout`)."""
    n, length, _ = Z.shape
    table = torch.full((n, length, n), -math.inf, device=loader.device, dtype=torch.float32)
    _fill_pairs(table, loader, block, bar)
    if observe is not None:
        observe(table)
    return _lower_mean_distance(table, k)


def mutual_scores_across(Z: Tensor, comm, counts: Sequence[int], top_fraction: float = 0.3, *, block: int = 8,
                         device: torch.device | str | None = None, bar=None, observe=None) -> Tensor:
    """Exact MSM of a group whose images are spread over ranks; equals :func:`mutual_scores` on the whole group.

    ``Z`` is this rank's ``[n, L, C]`` share (rank r holds ``counts[r]`` consecutive images of the group, in rank
    order). Pairs inside the share are multiplied once each (as in one process); the other ranks' shares arrive
    ``block`` images at a time (:meth:`zsad.distributed.Dist.broadcast_tensor`, every rank in the same order) and
    are multiplied with this rank's images only. Memory per rank: its share of Z, one received block and a
    ``[n, L, N]`` fp32 table (4*n*L*N bytes: the single-process table divided by the number of ranks). Sent per
    rank: its share once to every other rank (2*n*L*C bytes in fp16, 4*n*L*C in fp32, per (r, layer) pass).
    Pair products per rank: n^2/2 + n*(N - n), against N^2/2 in one process. ``observe(table)`` as in
    :func:`mutual_scores` (every rank calls it, in step: it may gather).

    Returns:
        ``[n, L]`` fp32 scores of this rank's images, on ``Z.device``.
    """
    _check_fraction(top_fraction)
    rank, total = comm.rank, sum(counts)
    if total < 2:
        raise BatchTooSmallError(f"mutual scoring needs at least 2 images, got {total}")
    n, length, channels = Z.shape
    offset = sum(counts[:rank])
    dev = torch.device(device) if device is not None else Z.device
    loader = _Loader(Z, dev, None)
    table = torch.full((n, length, total), -math.inf, device=dev, dtype=torch.float32)
    if bar is None:
        bar = tqdm(disable=True)
    if n:
        _fill_pairs(table, loader, block, bar, offset)
    start = 0
    for src, count in enumerate(counts):
        for s in range(0, count, block):
            e = min(count, s + block)
            received = comm.broadcast_tensor(Z[s:e] if src == rank else None, (e - s, length, channels), Z.dtype,
                                             src)
            if src != rank and n:
                zr = received.to(dev, torch.float32)
                for qs in range(0, n, block):
                    row, _ = _tile_exact(loader(slice(qs, min(n, qs + block)))[0], zr)
                    table[qs : qs + block, :, start + s : start + e] = row
                bar.update()
        start += count
    if observe is not None:
        observe(table)
    k = _num_kept(total - 1, top_fraction)
    return _lower_mean_distance(table, k).to(Z.device)


def _sampled_table_scores(
    Z: Tensor, k: int, block: int, loader: _Loader, reference_size: int, seed: int, bar
) -> Tensor:
    """R sampled references per image (see :func:`sample_references`). Table ``[N, L, R]`` on the device."""
    n, length, _ = Z.shape
    device = loader.device
    perm = _circle_order(n, seed)
    ahead, behind = (reference_size + 1) // 2, reference_size // 2
    table = torch.empty(n, length, reference_size, device=device, dtype=torch.float32)
    for p in range(n):
        bar.update()
        i = int(perm[p])
        zq = loader(slice(i, i + 1))
        for d0 in range(1, ahead + 1, block):
            offsets = torch.arange(d0, min(ahead, d0 + block - 1) + 1)
            refs = perm[(p + offsets) % n]
            row, col = loader.tile(zq, loader(refs))
            table[i, :, d0 - 1 : d0 - 1 + offsets.numel()] = row[0]
            back = offsets <= behind  # image perm[p + d] has perm[p] as its backward offset d
            if bool(back.any()):
                cols = (ahead + offsets[back] - 1).to(device)
                table[refs[back].to(device), :, cols] = col[back.to(device), :, 0]
    return _lower_mean_distance(table, k)


@torch.no_grad()
def mutual_scores(
    Z: Tensor,
    top_fraction: float = 0.3,
    *,
    block: int = 8,
    reference_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    device: torch.device | str | None = None,
    low_precision: bool | None = None,
    bar=None,
    observe=None,
) -> Tensor:
    """Mutual Scoring Mechanism (paper Eq. 4-6; official ``_MSM.py``), exact and block-tiled.

    Score of patch m of image i: mean of the k = max(1, floor(top_fraction * (N-1))) smallest of the N-1 values
    a_ij(m) = min_n ||Z[i, m] - Z[j, n]||_2, j != i (the official interval average with topmin_min = 0).

    Algorithm (design musc.md (a)1): for unit vectors d = sqrt(max(2 - 2cos, 0)), so a_ij(m) comes from the max
    cosine. Images are cut into blocks of ``block``; every (query block, later reference block) pair takes one GEMM
    ``[a*L, C] x [C, b*L]`` whose row maxima give the query->reference minima and whose column maxima give the
    reference->query minima, so each unordered image pair is multiplied once (half the GEMM work of the official
    code) and sqrt is taken only of the k selected values. Inside a block, image i is multiplied with images i+1.. of the block.
    Only per-(patch, image) maxima are kept, in a ``[N, L, N]`` fp32 table.

    Memory beyond Z: the table, 4*N^2*L bytes (N=200, L=1369: 0.22 GB; N=2000: 22 GB, where ``reference_size`` is
    the way out), plus per tile the product 4*(block*L)^2 bytes (block=8, L=1369: 0.48 GB) and two fp32 image
    blocks; the low-precision screen adds top-2 values/indices (a few times the tile's [block, L, block] slice of
    the table) and per-image gathers of 4*L*block*C bytes. Nothing else grows with N. Memory measured on CPU at
    L=1369, C=1024 (evaluation/bench_musc.py): ~490 MiB at block=8, ~160 MiB at block=4, flat from N=16 to 32.

    ``reference_size=R`` (< N-1): each image is scored against R other images (:func:`sample_references`,
    deterministic in ``seed``), k = max(1, floor(top_fraction*R)); cost N*R/2 pair products and a [N, L, R] table.
    Accuracy cost: the mean of the lowest top_fraction of R random references is an estimate of the full-pool value
    with a variance roughly proportional to 1/(top_fraction*R); maps get noisier and image ranking slightly worse
    (design musc.md (a)3 suggests R of 200-500). R >= N-1 is the exact computation.

    Low precision: by default (``low_precision=None``) fp16/bf16 Z on a CUDA device, or fp32 Z on CUDA with TF32
    enabled, is screened with a low-precision GEMM that picks each nearest patch (top-2); winners are re-scored in
    fp32 and every minimum whose runner-up could be within the screen's error bound is recomputed exactly in fp32,
    so the result equals the fp32 one up to fp32 rounding. ``low_precision=True`` forces the screen (fp16 when Z is
    fp32; on CPU this only serves tests), ``False`` forbids it. Distances use the stored values as they are: Z must
    be unit-norm in its storage precision (fp16 storage itself perturbs distances by ~1e-3).

    Args:
        Z: ``[N, L, C]`` unit vectors (any float dtype, any device), N >= 2.
        top_fraction: share of the lowest per-image distances averaged, in (0, 1].
        block: images per tile side; bounds the tile memory (see above).
        reference_size: number of sampled reference images per image, or None for all N-1.
        seed: seed of the reference sampling.
        progress: show a tqdm bar over tiles.
        device: where the GEMMs run; blocks of Z are moved there as needed. Default ``Z.device``.
        low_precision: see above.
        bar: an open tqdm bar to advance instead (one bar over many passes; ``progress`` is then ignored).
        observe: called with the exact ``[N, L, N]`` max-cosine table before it is reduced (exact path only).

    Returns:
        ``[N, L]`` fp32 on ``Z.device``; never NaN for finite unit-norm Z.
    """
    _check_z(Z)
    _check_fraction(top_fraction)
    if not isinstance(block, int) or block < 1:
        raise UsageError(f"block must be a positive integer, got {block!r}")
    n = Z.shape[0]
    dev = torch.device(device) if device is not None else Z.device
    loader = _Loader(Z, dev, _choose_screening(Z, dev, low_precision))
    if reference_size is not None and reference_size < 1:
        raise UsageError(f"reference_size must be a positive integer, got {reference_size!r}")
    if observe is not None and reference_size is not None and reference_size < n - 1:
        raise UsageError("repeat detection needs exact mutual scoring (every image against all others): "
                         "reference_size must be unset")
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=_msm_steps(n, block, reference_size), desc="MSM", disable=not progress, leave=False)
    try:
        if reference_size is None or reference_size >= n - 1:
            k = _num_kept(n - 1, top_fraction)
            logger.debug("MSM exact: N=%d L=%d k=%d block=%d device=%s", n, Z.shape[1], k, block, dev)
            scores = _exact_table_scores(Z, k, block, loader, bar, observe)
        else:
            k = _num_kept(reference_size, top_fraction)
            logger.debug("MSM sampled: N=%d R=%d k=%d block=%d device=%s", n, reference_size, k, block, dev)
            scores = _sampled_table_scores(Z, k, block, loader, reference_size, seed, bar)
    finally:
        if own_bar:
            bar.close()
    return scores.to(Z.device)


@torch.no_grad()
def mutual_scores_reference(Z: Tensor, top_fraction: float = 0.3) -> Tensor:
    """Slow, obviously correct MSM, shaped like the official ``compute_scores_fast`` (``_MSM.py``).

    For each query image: ``torch.cdist`` against all patches of the other N-1 images, min per image, k smallest,
    mean. Peak memory grows with N: L*(N-1)*L distances plus a copy of the references per query.

    Args:
        Z: ``[N, L, C]`` unit vectors, N >= 2.

    Returns:
        ``[N, L]`` fp32 on ``Z.device``.
    """
    _check_z(Z)
    _check_fraction(top_fraction)
    n, length, c = Z.shape
    z = Z.to(torch.float32)
    k = _num_kept(n - 1, top_fraction)
    out = torch.empty(n, length, device=Z.device, dtype=torch.float32)
    for i in range(n):
        others = torch.cat([z[:i], z[i + 1 :]]).reshape(-1, c)
        dist = torch.cdist(z[i], others).view(length, n - 1, length).amin(dim=2)  # [L, N-1]
        out[i] = dist.topk(k, dim=1, largest=False).values.mean(dim=1)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------------------------------------------


def _lnamd_streamed(tokens: Tensor, r: int, device: torch.device, chunk: int, dtype: torch.dtype) -> Tensor:
    """:func:`lnamd` over image chunks on ``device``; ``[N, L, C]`` result stored on ``tokens.device``."""
    out = torch.empty(tokens.shape, dtype=dtype, device=tokens.device)
    for s in range(0, tokens.shape[0], chunk):
        out[s : s + chunk] = lnamd(tokens[s : s + chunk].to(device), r).to(tokens.device, dtype)
    return out


@torch.no_grad()
def musc_patch_scores(
    layer_tokens: Sequence[Tensor],
    rs: Sequence[int] = (1, 3, 5),
    top_fraction: float = 0.3,
    block: int = 8,
    reference_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    *,
    seed: int = 0,
    z_dtype: torch.dtype = torch.float32,
    comm=None,
    counts: Sequence[int] | None = None,
    observe=None,
) -> Tensor:
    """MuSc patch anomaly scores: mean of the len(rs)*len(layers) MSM maps (official ``musc.py``, r outer, layer
    inner, equal weights).

    For each (r, layer): Z = :func:`lnamd` (computed in chunks of ``block`` images on ``device``, stored on the
    tokens' device in ``z_dtype``), then :func:`mutual_scores` streaming blocks of Z to ``device``. Only one Z is
    alive at a time. ``z_dtype=torch.float16`` halves host memory and enables the CUDA tensor-core screen, at
    ~1e-3 deviation from fp32 (storage rounding).

    Args:
        layer_tokens: per layer ``[N, L, C_l]`` patch tokens (no class token), same N and L for all layers.
        rs: LNAMD degrees. top_fraction, block, reference_size, seed: as in :func:`mutual_scores`.
        device: compute device; default the tokens' device.
        progress: one tqdm bar over all ``len(rs) * len(layers)`` mutual-scoring passes.
        z_dtype: storage dtype of the aggregated features.
        comm, counts: a group spread over ranks (:class:`zsad.distributed.Dist` and each rank's image count);
            ``layer_tokens`` are then this rank's share and the result its rows (:func:`mutual_scores_across`,
            always exact: ``reference_size`` is not used).
        observe: called with each pass's max-cosine table (this rank's rows) before it is reduced, in pass order
            (:mod:`.repeats`).

    Returns:
        ``[N, L]`` fp32 on the tokens' device (accumulated in float64 like the official code).
    """
    layers = list(layer_tokens)
    if not layers:
        raise UsageError("musc_patch_scores needs at least one layer of tokens")
    shapes = {tuple(t.shape[:2]) for t in layers}
    if len(shapes) != 1 or any(t.dim() != 3 for t in layers):
        raise UsageError(f"all layers must be [N, L, C] with the same N and L, got {[tuple(t.shape) for t in layers]}")
    rs = list(rs)
    if not rs:
        raise UsageError("rs must name at least one LNAMD degree")
    for r in rs:
        _check_degree(r)
    home = layers[0].device
    dev = torch.device(device) if device is not None else home
    n, length = layers[0].shape[:2]
    across = comm is not None and comm.active
    if (sum(counts) if across else n) < 2:
        raise BatchTooSmallError("musc", 2, sum(counts) if across else n)  # mutual scoring itself needs a pair
    total = torch.zeros(n, length, dtype=torch.float64, device=home)
    steps = len(rs) * len(layers) * _msm_steps(n, block, reference_size)
    with tqdm(total=steps, desc="mutual scoring", disable=not progress, leave=False) as bar:
        for r in rs:
            for li, tokens in enumerate(layers):
                z = _lnamd_streamed(tokens, r, dev, max(1, block), z_dtype)
                logger.debug("MSM for r=%d layer=%d", r, li)
                if across:
                    total += mutual_scores_across(z, comm, counts, top_fraction, block=block, device=dev,
                                                  bar=bar, observe=observe).to(home, torch.float64)
                    del z
                    continue
                total += mutual_scores(
                    z,
                    top_fraction,
                    block=block,
                    reference_size=reference_size,
                    seed=seed,
                    device=dev,
                    bar=bar,
                    observe=observe,
                ).to(home, torch.float64)
                del z
    return (total / (len(rs) * len(layers))).to(torch.float32)

