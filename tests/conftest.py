"""Shared fixtures: a tiny random backbone (built once) and synthetic images made in code."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_backbone():
    from zsad.backbones import load_backbone

    return load_backbone("tiny-random", image_size=112, device="cpu")


@pytest.fixture(scope="session")
def tiny_detector():
    import zsad

    return zsad.create("clip", backbone="tiny-random", image_size=112, device="cpu", precision="fp32")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


@pytest.fixture
def make_image(rng):
    def factory(width: int = 64, height: int = 48) -> Image.Image:
        return random_image(rng, width, height)

    return factory


@pytest.fixture
def loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers the tests start)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prompt_train_data(tmp_path_factory):
    """One small category with masks (MVTec layout, test split only), for training tests."""
    from zsad.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("train_data")
    make_dataset(root, categories=["weave"], n_train_good=0, n_test_good=3, n_test_defect=3, size=64)
    return root


@pytest.fixture
def prompt_train_config(prompt_train_data):
    """``make(out, **changes)``: a fast ``zsad train-prompts`` config on :func:`prompt_train_data` (56 px, 2 epochs)."""
    from zsad.methods.anomalyclip.train import TrainConfig

    def make(out, **changes):
        base = dict(data=prompt_train_data, out=out, backbone="tiny-random", epochs=2, batch_size=4, image_size=56,
                    progress=False, workers=0)
        return TrainConfig(**{**base, **changes})

    return make
