"""Without network, a missing backbone fails at once with the one missing-weights message (no retries).

Every test here is confined to loopback: a guard refuses any other connection, so nothing reaches the internet.
"""

from __future__ import annotations

import logging
import socket
import time

import open_clip  # imported up front: the look-ups import it (and torch), which is not what is timed
import pytest

from zsad import weights
from zsad.errors import WeightsNotFoundError

_real_connect = socket.socket.connect


def _loopback_only(sock: socket.socket, address):  # noqa: ANN001 - socket's own signature
    host = address[0] if isinstance(address, tuple) else address
    if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        raise AssertionError(f"a test tried to connect to {address}")
    return _real_connect(sock, address)


@pytest.fixture
def closed_port():
    """A loopback port bound but not listening: connecting to it is refused (and nobody else can take it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def no_network(monkeypatch, closed_port, tmp_path):
    """The Hub is at a closed loopback port (as with HF_ENDPOINT=http://127.0.0.1:PORT), no proxy, no offline flag,
    an empty cache, and no connection may leave the machine."""
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{closed_port}"
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                 "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # huggingface_hub read HF_ENDPOINT when imported
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    return tmp_path / "hf-cache"


def _fails_fast(call, caplog, capfd) -> str:
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as info:
        call()
    seconds = time.monotonic() - started
    assert seconds < 5, f"took {seconds:.1f} s"
    logged = caplog.text + capfd.readouterr().err
    assert "Retrying" not in logged and "Retry " not in logged
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub") and r.levelno >= logging.WARNING]
    return str(info.value)


def test_uncached_tag_without_network_fails_fast(no_network, caplog, capfd):
    message = _fails_fast(lambda: weights.resolve_tag_checkpoint("ViT-B-32", "openai", cache_dir=str(no_network)),
                          caplog, capfd)
    assert "ViT-B-32:openai" in message
    assert "cannot be reached" in message and "127.0.0.1" in message
    assert str(no_network) in message  # where it looked
    assert "open_clip.create_model('ViT-B-32', pretrained='openai')" in message


def test_uncached_hf_hub_repo_without_network_fails_fast(no_network, caplog, capfd):
    message = _fails_fast(lambda: weights.resolve_hf_hub_dir("org/clip", cache_dir=str(no_network)), caplog, capfd)
    assert "hf-hub:org/clip" in message and "cannot be reached" in message
    assert "huggingface-cli download org/clip" in message


def test_load_backbone_without_network_fails_fast(no_network, caplog, capfd):
    from zsad.backbones import load_backbone

    message = _fails_fast(lambda: load_backbone("hf-hub:org/clip", cache_dir=str(no_network)), caplog, capfd)
    assert "tiny-random" in message


def test_offline_flag_still_wins_without_any_connection(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "check_reachable", lambda *a, **k: pytest.fail("probed although offline"))
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE=1"):
        weights.resolve_hf_hub_dir("org/clip", cache_dir=str(no_network))


def test_dns_failure_counts_as_offline(monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(weights.ServerUnreachableError, match="gaierror"):
        weights.check_reachable("https://hub.invalid")


def test_slow_dns_is_cut_short(monkeypatch):
    def slow_dns(*args, **kwargs):
        time.sleep(2)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    started = time.monotonic()
    with pytest.raises(weights.ServerUnreachableError, match="DNS"):
        weights.check_reachable("https://hub.invalid", timeout=0.2)
    assert time.monotonic() - started < 1.5


def test_listening_server_is_reachable_and_the_download_goes_ahead(no_network, monkeypatch, tmp_path):
    """With the server up, the probe passes and the download itself is attempted (stubbed here)."""
    from huggingface_hub import constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        weights.check_reachable(endpoint)
        target = tmp_path / "w.bin"
        monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, cache_dir=None: str(target))
        assert weights.resolve_tag_checkpoint("ViT-B-32", "openai", cache_dir=str(no_network)) == str(target)


def test_probe_goes_to_the_proxy_when_one_is_set(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert weights._connect_address("https://huggingface.co") == ("proxy.example", 3128)
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert weights._connect_address("https://huggingface.co") == ("huggingface.co", 443)
