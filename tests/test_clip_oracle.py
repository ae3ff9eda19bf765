"""An oracle for the ``clip`` method: its maps and image scores recomputed here from the backbone's tokens with
independently written maths (torch ops in float64: sigmoid of the cosine difference, a hand-written bilinear
resize and Gaussian filter), compared with ``Detector.score``.

The rule (zsad/methods/clip.py, zsad/scoring/maps.py): per tapped block, V-V patch tokens -> ``ln_post`` and
``proj`` -> L2-normalised -> ``softmax(cos / 0.07)`` over [normal, anomalous] text embeddings; the anomalous
probabilities are averaged over the taps, upsampled bilinearly (``align_corners=False``) to the input size S,
smoothed with a Gaussian of sigma ``4 * S / 518`` (scipy conventions: radius ``int(4 * sigma + 0.5)``, mirror
padding that repeats the edge) and resized bilinearly to the original size. Image score: ``0.5 * (global + max
of the S x S map)``, where ``global`` is the anomalous probability of the standard CLIP image embedding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zsad

TEMPERATURE = 0.07


def _bilinear(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, h, w]`` -> ``[B, height, width]``, half-pixel centres (``align_corners=False``), no antialiasing."""

    def axis(n_in: int, n_out: int):
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, src - lo

    y0, y1, wy = axis(maps.shape[1], height)
    x0, x1, wx = axis(maps.shape[2], width)
    rows = maps[:, y0, :] * (1 - wy)[None, :, None] + maps[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def _gaussian(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter with scipy.ndimage.gaussian_filter's defaults (truncate 4, mode 'reflect')."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()

    def along(x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        assert radius <= n
        # 'reflect' in scipy repeats the edge sample: (d c b a | a b c d | d c b a)
        padded = torch.cat([x.narrow(dim, 0, radius).flip(dim), x, x.narrow(dim, n - radius, radius).flip(dim)], dim)
        windows = padded.unfold(dim, 2 * radius + 1, 1)  # [..., n, ..., 2r+1]
        return windows @ kernel

    return along(along(maps, 1), 2)


def _anomalous_probability(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """softmax over two classes = sigmoid of the logit difference."""
    features = features / features.norm(dim=-1, keepdim=True)
    cos = features @ text.T
    return torch.sigmoid((cos[..., 1] - cos[..., 0]) / TEMPERATURE)


def _oracle(detector, images):
    method, backbone = detector.method, detector.backbone
    n_blocks = backbone.num_layers
    vv_start = n_blocks - round(n_blocks * 19 / 24)  # AnomalyCLIP's last 19 of 24 blocks, scaled to the depth
    layers = list(method.layers)
    text = method._state_text[method.class_name].double()
    size = backbone.image_size
    batch = backbone.preprocess(images)
    with torch.no_grad():
        out = backbone.tokens(batch, layers, vv=True, vv_start=vv_start)
        per_block = [_anomalous_probability(backbone.project_patches(out.layers[i][:, 1:]).double(), text)
                     for i in layers]
        global_prob = _anomalous_probability(out.pooled.double(), text)
    patch = torch.stack(per_block).mean(0)  # [B, L]
    side = int(round(patch.shape[1] ** 0.5))
    assert side * side == patch.shape[1]
    grid = patch.reshape(-1, side, side)  # tokens are row-major over the patch grid
    smoothed = _gaussian(_bilinear(grid, size, size), 4.0 * size / 518)
    results = []
    for i, image in enumerate(images):
        width, height = image.size
        full = _bilinear(smoothed[i:i + 1], height, width)[0]
        map_max = float(smoothed[i].max())
        results.append((0.5 * (float(global_prob[i]) + map_max), full.numpy(), float(global_prob[i]), map_max))
    return results


@pytest.mark.parametrize("size", [56, 224])
def test_clip_scores_and_maps_equal_the_oracle(size):
    from PIL import Image

    rng = np.random.default_rng(size)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
              for w, h in [(97, 61), (40, 90), (size, size), (300, 120)]]
    images.append(Image.new("RGB", (64, 48), (128, 128, 128)))  # a flat image: the border handling matters
    detector = zsad.create("clip", backbone="tiny-random", image_size=size, device="cpu", precision="fp32",
                           warn_random=False, class_name="bottle")
    text = detector.method._state_text["bottle"]
    assert text.shape[0] == 2 and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    results = detector.score(images)
    expected = _oracle(detector, images)
    spread = 0.0
    for result, (score, amap, global_prob, map_max) in zip(results, expected):
        assert result.anomaly_map.shape == amap.shape
        np.testing.assert_allclose(result.anomaly_map, amap, rtol=0, atol=1e-5)
        assert result.image_score == pytest.approx(score, abs=1e-5)
        assert result.extras["global_score"] == pytest.approx(global_prob, abs=1e-5)
        assert result.extras["map_max"] == pytest.approx(map_max, abs=1e-5)
        spread = max(spread, float(amap.max() - amap.min()))
    assert spread > 1e-3  # the maps are not flat, so the comparison says something about their shape


def test_the_oracle_can_tell_a_wrong_convention():
    """The oracle is sharp enough: the map with another smoothing or upsampling differs by more than 1e-5."""
    from zsad.scoring.maps import gaussian_smooth, grid_to_image

    rng = torch.Generator().manual_seed(0)
    patch = torch.rand(2, 16, generator=rng, dtype=torch.float64)
    mine = _gaussian(_bilinear(patch.reshape(2, 4, 4), 56, 56), 4 * 56 / 518)
    theirs = gaussian_smooth(grid_to_image(patch.float(), 56), 4 * 56 / 518).double()
    assert torch.allclose(mine, theirs, atol=1e-6)
    assert (gaussian_smooth(grid_to_image(patch.float(), 56, align_corners=True), 4 * 56 / 518).double()
            - mine).abs().max() > 1e-3
    assert (_gaussian(_bilinear(patch.reshape(2, 4, 4), 56, 56), 2 * 56 / 518) - mine).abs().max() > 1e-3
