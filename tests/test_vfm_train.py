"""``zsad train-vfm``: the official loss, the adapters learn (the backbone stays frozen), the folder is an adapter
``--method vfm`` scores with, and an interrupted run resumed equals an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zsad

SIZE = 32  # 2 x 2 patches of the tiny RADIO


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from zsad.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("vfm_data")
    make_dataset(root, categories=["weave"], n_train_good=2, n_test_good=1, n_test_defect=3, size=48)
    return root


def _config(data, out, **changes):
    from zsad.methods.vfm.train import VfmTrainConfig

    base = dict(data=data, out=out, backbone="radio:tiny:random", image_size=SIZE, steps=2, batch_size=4,
                accumulation=2, rank=4, save_every=1, progress=False, workers=0, device="cpu")
    return VfmTrainConfig(**{**base, **changes})


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "weights.safetensors"))


def test_the_loss_is_the_official_one():
    from torchvision.ops import sigmoid_focal_loss

    from zsad.methods.vfm.train import vfm_loss

    torch.manual_seed(0)
    score, labels = torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0])
    mask, conf = torch.randn(4, 1, 6, 6), torch.randn(4, 1, 6, 6)
    gt = (torch.rand(4, 1, 6, 6) > 0.7).float()
    image, mask_loss = vfm_loss(score, mask, conf, labels, gt)
    assert torch.isclose(image, sigmoid_focal_loss(score, labels, reduction="mean"))
    # written out independently: c (5 focal + L1 of the clipped probability) - 0.1 log c, c = 1 + e^conf
    p = mask.sigmoid()
    ce = -(gt * torch.log(p) + (1 - gt) * torch.log(1 - p))
    p_t = p * gt + (1 - p) * (1 - gt)
    focal = (0.25 * gt + 0.75 * (1 - gt)) * ce * (1 - p_t) ** 2
    c = 1 + conf.exp()
    expected = (c * (5 * focal + (p.clamp(0.1, 0.9) - gt).abs()) - 0.1 * torch.log(c)).mean()
    assert torch.isclose(mask_loss, expected, atol=1e-6)


def test_training_writes_an_adapter_that_scores_and_resumes_exactly(data, tmp_path):
    from zsad.backbones import load_backbone
    from zsad.methods.vfm.train import train_vfm

    straight = train_vfm(_config(data, tmp_path / "straight", steps=3))
    log = (straight / "train_log.csv").read_text().splitlines()
    assert len(log) == 4 and all(np.isfinite(float(row.split(",")[1])) for row in log[1:])
    # the adapters moved away from DoRA's identity start (B = 0) and the backbone did not change
    tensors = _tensors(straight)
    assert float(tensors["dora.blocks.0.qkv.lora_B_q"].abs().max()) > 0
    fresh = load_backbone("radio:tiny:random", image_size=SIZE, warn_random=False)
    detector = zsad.create("vfm", backbone="radio:tiny:random", image_size=SIZE, device="cpu", precision="fp32",
                           adapter=str(straight), warn_random=False)
    torch.testing.assert_close(detector.method.backbone.model.pos_embed, fresh.model.pos_embed)
    results = detector.score([data / "weave" / "test" / "good" / name for name in
                              sorted(p.name for p in (data / "weave" / "test" / "good").iterdir())])
    assert all(0.0 <= r.image_score <= 1.0 for r in results)
    # interrupted after 2 steps, resumed to 3: the same tensors as the straight run
    interrupted = _config(data, tmp_path / "resumed", steps=2)
    train_vfm(interrupted)
    with pytest.raises(zsad.ZsadError, match="--resume"):
        train_vfm(interrupted)
    with pytest.raises(zsad.ZsadError, match="other settings"):
        train_vfm(_config(data, tmp_path / "resumed", steps=3, lr=1e-3, resume=True))
    resumed = train_vfm(_config(data, tmp_path / "resumed", steps=3, resume=True))
    again = _tensors(resumed)
    assert set(again) == set(tensors)
    for name, value in tensors.items():
        torch.testing.assert_close(again[name], value, rtol=0, atol=1e-6, msg=name)
