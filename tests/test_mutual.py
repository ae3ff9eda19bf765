"""Tests for zsad.methods.musc (MuSc LNAMD / MSM / RsCIN) against slow references written here.

References follow the official code (github.com/xrli-U/MuSc, models/modules/_LNAMD.py, _MSM.py, _RsCIN.py) in
spirit but are written independently: explicit loops, explicit difference norms, explicit masking.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from zsad.errors import BatchTooSmallError, UsageError
from zsad.methods.musc import (
    lnamd,
    musc_patch_scores,
    mutual_scores,
    mutual_scores_reference,
    rscin,
    sample_references,
)
from zsad.methods.musc import msm as M

ATOL = 1e-5


def _unit(*shape: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


# ---------------------------------------------------------------------------------------------------- references


def _lnamd_loops(tokens: Tensor, r: int) -> Tensor:
    """[B, L, C] -> [B, L, C]: standardise each image by hand, zero-pad, average every window by explicit loops."""
    b, length, c = tokens.shape
    h = math.isqrt(length)
    out = torch.empty(b, length, c, dtype=torch.float64)
    pad = (r - 1) // 2
    for n in range(b):
        x = tokens[n].double().T.reshape(c, h, h)
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)
        padded = torch.zeros(c, h + 2 * pad, h + 2 * pad, dtype=torch.float64)
        padded[:, pad : pad + h, pad : pad + h] = x
        for yy in range(h):
            for xx in range(h):
                v = padded[:, yy : yy + r, xx : xx + r].sum(dim=(1, 2)) / (r * r)
                out[n, yy * h + xx] = v / v.norm()
    return out.float()


def _lnamd_unfold(tokens: Tensor, r: int) -> Tensor:
    """The official route: LayerNorm module, Unfold to channel-major C*r*r values, adaptive_avg_pool1d to C."""
    b, length, c = tokens.shape
    h = math.isqrt(length)
    x = tokens.float().permute(0, 2, 1).reshape(b, c, h, h)
    x = torch.nn.LayerNorm([c, h, h], elementwise_affine=False)(x)
    cols = torch.nn.Unfold(kernel_size=r, padding=(r - 1) // 2)(x)  # [b, c*r*r, L]
    cols = cols.permute(0, 2, 1).reshape(b * length, 1, c * r * r)
    pooled = F.adaptive_avg_pool1d(cols, c).reshape(b, length, c)
    return pooled / pooled.norm(dim=-1, keepdim=True)


def _expected_k(num_refs: int) -> int:
    return max(1, int(num_refs * 0.3))


def _msm_slow(z: Tensor, refs: list[list[int]] | None = None, top_fraction: float = 0.3) -> Tensor:
    """Per query image: full difference-norm matrix per other image, min, sort, mean of the k smallest."""
    n, length, _ = z.shape
    z = z.double()
    out = torch.empty(n, length, dtype=torch.float64)
    for i in range(n):
        others = refs[i] if refs is not None else [j for j in range(n) if j != i]
        per_image = []
        for j in others:
            diff = z[i][:, None, :] - z[j][None, :, :]  # [L, L, C]
            per_image.append(diff.norm(dim=-1).min(dim=1).values)
        a = torch.stack(per_image, dim=1)  # [L, R]
        k = max(1, int(len(others) * top_fraction))
        out[i] = a.sort(dim=1).values[:, :k].mean(dim=1)
    return out.float()


def _rscin_slow(scores: Tensor, emb: Tensor, ks: list[int], normalize: bool = True) -> Tensor:
    """Official MMO logic: zero all but each row's k largest similarities, then D^-1 W s_hat, mean over ks."""
    s = scores.double()
    s_hat = (s - s.min()) / (s.max() - s.min())
    f = emb.double()
    if normalize:
        f = f / f.norm(dim=1, keepdim=True)
    w = f @ f.T
    n = len(s)
    results = []
    for k in ks:
        kk = min(k, n)
        res = torch.empty(n, dtype=torch.float64)
        for i in range(n):
            order = sorted(range(n), key=lambda j: -float(w[i, j]))
            keep = order[:kk]
            res[i] = sum(float(w[i, j]) * float(s_hat[j]) for j in keep) / sum(float(w[i, j]) for j in keep)
        results.append(res)
    return torch.stack(results).mean(dim=0)


# ---------------------------------------------------------------------------------------------------- LNAMD


@pytest.mark.parametrize("r", [1, 3, 5])
def test_lnamd_matches_loops_and_unfold(r: int) -> None:
    g = torch.Generator().manual_seed(r)
    tokens = torch.randn(2, 36, 5, generator=g) * 3.0 + 1.5  # 6x6 grid: r=5 pads two border rows
    got = lnamd(tokens, r)
    assert got.shape == (2, 36, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got, _lnamd_loops(tokens, r), atol=ATOL, rtol=0)
    torch.testing.assert_close(got, _lnamd_unfold(tokens, r), atol=ATOL, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2, 36), atol=ATOL, rtol=0)


def test_lnamd_low_precision_input_computes_in_fp32() -> None:
    tokens = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1)).half()
    got = lnamd(tokens, 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _lnamd_loops(tokens.float(), 3), atol=ATOL, rtol=0)


@pytest.mark.parametrize("bad_r", [0, 2, 4, -1])
def test_lnamd_rejects_even_degree(bad_r: int) -> None:
    with pytest.raises(UsageError):
        lnamd(torch.randn(1, 16, 4), bad_r)


def test_lnamd_rejects_non_square_grid() -> None:
    with pytest.raises(UsageError):
        lnamd(torch.randn(1, 17, 4), 3)  # a class token left in


# ---------------------------------------------------------------------------------------------------- MSM exact


@pytest.mark.parametrize("n,k", [(5, 1), (6, 1), (11, 3), (33, 9)])
def test_mutual_scores_matches_slow_reference(n: int, k: int) -> None:
    assert _expected_k(n - 1) == k == M._num_kept(n - 1, 0.3)
    z = _unit(n, 16, 8, seed=n)
    want = _msm_slow(z)
    torch.testing.assert_close(mutual_scores_reference(z), want, atol=ATOL, rtol=0)
    for block in (1, 3, 8, n + 1):
        got = mutual_scores(z, block=block)
        assert got.shape == (n, 16) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_two_images_work_and_fewer_raise() -> None:
    z = _unit(2, 9, 4, seed=2)
    torch.testing.assert_close(mutual_scores(z), _msm_slow(z), atol=ATOL, rtol=0)
    for n in (0, 1):
        with pytest.raises(BatchTooSmallError):
            mutual_scores(_unit(max(n, 1), 9, 4)[:n])
        with pytest.raises(BatchTooSmallError):
            mutual_scores_reference(_unit(max(n, 1), 9, 4)[:n])


def test_permutation_equivariance() -> None:
    z = _unit(9, 16, 8, seed=3)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mutual_scores(z[perm], block=4), mutual_scores(z, block=4)[perm], atol=1e-6, rtol=0)


def test_duplicated_image_lowers_both_copies() -> None:
    base = _unit(9, 16, 8, seed=4)
    with_extra = torch.cat([base, _unit(1, 16, 8, seed=99)])
    with_copy = torch.cat([base, base[:1]])
    before = mutual_scores(with_extra, block=3)[0]
    after = mutual_scores(with_copy, block=3)
    assert bool((after[0] < before).all()) and bool((after[9] < before).all())
    torch.testing.assert_close(after[0], after[9], atol=1e-6, rtol=0)


def test_planted_random_patch_gets_top_score() -> None:
    n, length, c = 12, 16, 32
    prototypes = _unit(length, c, seed=5)
    noise = torch.randn(n, length, c, generator=torch.Generator().manual_seed(6))
    z = F.normalize(prototypes.unsqueeze(0) + 0.05 * noise, dim=-1)
    z[7, 11] = _unit(c, seed=7)
    scores = mutual_scores(z, block=5)
    assert int(scores.flatten().argmax()) == 7 * length + 11


def test_identical_images_give_zero_not_nan() -> None:
    z = _unit(1, 16, 8, seed=8).expand(6, -1, -1).contiguous()
    scores = mutual_scores(z, block=4)
    assert not bool(scores.isnan().any())
    assert float(scores.abs().max()) < 2e-3  # d = sqrt(max(2 - 2cos, 0)) at cos ~ 1 in fp32


def test_fp16_storage_close_to_fp32() -> None:
    z = _unit(7, 16, 32, seed=9)
    got = mutual_scores(z.half(), block=3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, mutual_scores(z), atol=3e-3, rtol=0)


@pytest.mark.parametrize("kwargs", [{"top_fraction": 0.0}, {"top_fraction": 1.5}, {"block": 0}, {"reference_size": 0}])
def test_bad_arguments_raise_usage_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        mutual_scores(_unit(5, 9, 4), **kwargs)


# ---------------------------------------------------------------------------------------------------- MSM sampled


def test_reference_size_all_others_is_exact() -> None:
    z = _unit(8, 16, 8, seed=10)
    exact = mutual_scores(z, block=3)
    torch.testing.assert_close(mutual_scores(z, block=3, reference_size=7), exact, atol=0, rtol=0)
    torch.testing.assert_close(mutual_scores(z, block=3, reference_size=50), exact, atol=0, rtol=0)


@pytest.mark.parametrize("r", [1, 4, 5])
def test_sampled_references_are_deterministic_and_exact_for_their_sets(r: int) -> None:
    n = 11
    z = _unit(n, 16, 8, seed=11)
    refs = sample_references(n, r, seed=3)
    assert refs.shape == (n, r)
    for i in range(n):
        assert len(set(refs[i].tolist())) == r and i not in refs[i].tolist()
    got = mutual_scores(z, reference_size=r, seed=3, block=2)
    torch.testing.assert_close(got, mutual_scores(z, reference_size=r, seed=3, block=5), atol=0, rtol=0)
    torch.testing.assert_close(got, _msm_slow(z, refs.tolist()), atol=ATOL, rtol=0)
    assert not torch.equal(sample_references(n, r, seed=4), refs)


# ---------------------------------------------------------------------------------------------------- low precision


def test_low_precision_screen_matches_fp32_on_stored_values() -> None:
    z = _unit(7, 16, 32, seed=12).half()
    torch.testing.assert_close(
        mutual_scores(z, block=3, low_precision=True), mutual_scores(z, block=3), atol=ATOL, rtol=0
    )


def test_low_precision_screen_recovers_near_ties() -> None:
    # Every image holds near-copies of the same patches: runner-ups lie within fp16 rounding of the winner.
    base = _unit(4, 32, seed=13)
    noise = torch.randn(6, 16, 32, generator=torch.Generator().manual_seed(14))
    z = F.normalize(base.repeat(4, 1).unsqueeze(0) + 1e-3 * noise, dim=-1).half()
    torch.testing.assert_close(
        mutual_scores(z, block=4, low_precision=True), mutual_scores(z, block=4), atol=ATOL, rtol=0
    )


def test_rescoring_corrects_a_noisy_screen() -> None:
    """A screen whose products are off by up to its declared bound must still give the exact maxima."""
    declared = M._Screening(dtype=torch.float32, input_unit=2.0**-9)
    eps = declared.error_bound(torch.float32, 16)
    gen = torch.Generator().manual_seed(15)

    def noisy(a: Tensor, b: Tensor) -> Tensor:
        exact = a @ b.T
        return exact + (torch.rand(exact.shape, generator=gen) * 2 - 1) * 0.99 * eps

    screen = M._Screening(dtype=torch.float32, input_unit=2.0**-9, product=noisy)
    # Pairs of near-copies in every image: candidates 1e-3..1e-2 apart in cosine, so the noise swaps winners
    # (without the fallback the maxima are off by ~5e-3).
    base = _unit(3, 16, seed=16)[[0, 0, 1, 1, 2, 2]]
    zq = F.normalize(base.repeat(3, 1, 1) + 0.02 * torch.randn(3, 6, 16, generator=gen), dim=-1)
    zr = F.normalize(base.repeat(4, 1, 1) + 0.02 * torch.randn(4, 6, 16, generator=gen), dim=-1)
    row, col = M._tile_screened(zq, zr, zq, zr, screen)
    want_row, want_col = M._tile_exact(zq, zr)
    torch.testing.assert_close(row, want_row, atol=1e-6, rtol=0)
    torch.testing.assert_close(col, want_col, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------- RsCIN


@pytest.mark.parametrize("ks", [[1, 2, 3], [1, 8, 9], [2, 3]])
def test_rscin_matches_reference_loop(ks: list[int]) -> None:
    g = torch.Generator().manual_seed(17)
    scores = torch.rand(10, generator=g, dtype=torch.float64)
    emb = torch.randn(10, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rscin(scores, emb, ks), _rscin_slow(scores, emb, ks), atol=1e-10, rtol=0)


def test_rscin_k1_is_min_max_normalisation_and_unnormalised_mode() -> None:
    g = torch.Generator().manual_seed(18)
    scores = torch.rand(6, generator=g) * 5 + 2
    emb = torch.rand(6, 4, generator=g) + 0.5  # positive similarities, raw dot product
    s_hat = (scores - scores.min()) / (scores.max() - scores.min())
    torch.testing.assert_close(rscin(scores, emb, [1]), s_hat, atol=1e-6, rtol=0)
    got = rscin(scores, emb, [1, 3], normalize=False)
    torch.testing.assert_close(got.double(), _rscin_slow(scores, emb, [1, 3], normalize=False), atol=1e-6, rtol=0)


def test_rscin_k_at_least_n_is_clamped() -> None:
    g = torch.Generator().manual_seed(19)
    scores = torch.rand(4, generator=g, dtype=torch.float64)
    emb = torch.rand(4, 3, generator=g, dtype=torch.float64)
    clamped = rscin(scores, emb, [4])
    torch.testing.assert_close(rscin(scores, emb, [4, 9]), clamped, atol=1e-12, rtol=0)
    torch.testing.assert_close(clamped, _rscin_slow(scores, emb, [4]), atol=1e-12, rtol=0)


def test_rscin_constant_scores_are_not_nan() -> None:
    out = rscin(torch.full((5,), 0.7), torch.randn(5, 3), [1, 2, 3])
    assert out.shape == (5,) and not bool(out.isnan().any())
    torch.testing.assert_close(out, torch.zeros(5), atol=0, rtol=0)


def test_rscin_bad_arguments() -> None:
    with pytest.raises(UsageError):
        rscin(torch.rand(4), torch.rand(4, 3), [0, 1])
    with pytest.raises(UsageError):
        rscin(torch.rand(4), torch.rand(5, 3))


# ---------------------------------------------------------------------------------------------------- assembly


def test_musc_patch_scores_is_mean_of_maps() -> None:
    g = torch.Generator().manual_seed(20)
    layers = [torch.randn(6, 25, 8, generator=g), torch.randn(6, 25, 12, generator=g)]
    want = torch.stack([mutual_scores(lnamd(t, r)) for r in (1, 3) for t in layers]).mean(dim=0)
    got = musc_patch_scores(layers, rs=(1, 3), block=4, device="cpu")
    assert got.shape == (6, 25) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    half = musc_patch_scores([t.half() for t in layers], rs=(1, 3), block=2, z_dtype=torch.float16)
    torch.testing.assert_close(half, want, atol=3e-3, rtol=0)


def test_musc_patch_scores_rejects_mismatched_layers() -> None:
    with pytest.raises(UsageError):
        musc_patch_scores([torch.randn(5, 16, 4), torch.randn(5, 25, 4)])
    with pytest.raises(BatchTooSmallError):
        musc_patch_scores([torch.randn(1, 16, 4)])


def test_progress_is_one_bar_over_all_passes(capsys) -> None:
    """12 (degree, layer) passes advance a single bar, so logs get one bar per batch, not one per pass."""
    torch.manual_seed(0)
    layers = [torch.randn(5, 16, 8) for _ in range(4)]
    M.musc_patch_scores(layers, rs=(1, 3, 5), block=2, progress=True)
    err = capsys.readouterr().err
    assert "mutual scoring" in err and "MSM" not in err
    assert f"/{3 * 4 * 6}" in err  # 5 images in blocks of 2: 3 tiles -> 6 tile pairs per pass, 12 passes
