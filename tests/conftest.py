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
