"""Finding pretrained weights on this machine, and saying clearly what to do when they are missing.

The look-up order is the local Hugging Face cache first (honouring ``HF_HOME`` / ``HF_HUB_CACHE`` and
``cache_dir``), then — unless offline — a download through open_clip / huggingface_hub. Before a download, one
TCP connection to the server (the Hub at ``HF_ENDPOINT``, or the proxy in front of it) must open within
:data:`PROBE_TIMEOUT` seconds: a machine without network gets the missing-weights message at once, instead of
huggingface_hub's retries with back-off (five warnings over about 40 s per file).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from zsad.errors import UsageError, WeightsNotFoundError

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def offline_from_env() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network access (read when called, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


#: Seconds a TCP connection to the download server may take before the machine counts as offline.
PROBE_TIMEOUT = 3.0


class ServerUnreachableError(OSError):
    """No connection to the server weights would be downloaded from (no network, DNS failure, refused)."""


def hub_endpoint() -> str:
    """The Hub address huggingface_hub downloads from (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _connect_address(url: str) -> tuple[str, int]:
    """Host and port a download of ``url`` opens a connection to: its own, or the proxy's when one applies
    (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``, unless ``NO_PROXY`` exempts the host)."""
    parts = urlsplit(url)
    scheme = parts.scheme or "https"
    host, port = parts.hostname or "", parts.port or (443 if scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and host and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxy_parts.hostname:
            return proxy_parts.hostname, proxy_parts.port or (443 if proxy_parts.scheme == "https" else 80)
    return host, port


def _resolve(host: str, port: int, timeout: float) -> list[tuple]:
    """``getaddrinfo`` with a deadline (the resolver's own time-outs can add up to tens of seconds)."""
    found: list = []

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)

    worker = threading.Thread(target=look_up, name="zsad-dns-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not found:
        raise TimeoutError(f"no DNS answer for {host} within {timeout:g} s")
    if isinstance(found[0], OSError):
        raise found[0]
    return found[0]


def check_reachable(url: str, timeout: float | None = None) -> None:
    """Open (and close) one TCP connection to the server of ``url``; :class:`ServerUnreachableError` when that
    fails within ``timeout`` seconds (default :data:`PROBE_TIMEOUT`, DNS look-up included): no route, no DNS
    answer, refused, timed out."""
    host, port = _connect_address(url)
    if not host:
        raise ServerUnreachableError(f"no host in download address '{url}'")
    deadline = time.monotonic() + (PROBE_TIMEOUT if timeout is None else timeout)
    error: OSError | None = None
    try:
        for family, kind, proto, _, address in _resolve(host, port, max(deadline - time.monotonic(), 0.01)):
            left = deadline - time.monotonic()
            if left <= 0:
                error = error or TimeoutError(f"no connection within {timeout or PROBE_TIMEOUT:g} s")
                break
            try:
                with socket.socket(family, kind, proto) as sock:
                    sock.settimeout(left)
                    sock.connect(address)
                return
            except OSError as exc:
                error = exc
    except OSError as exc:  # socket.gaierror (no DNS / unknown host), TimeoutError
        error = exc
    error = error or OSError("no address")
    reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    raise ServerUnreachableError(f"cannot connect to {host}:{port} for {url} ({reason})") from error


def hf_cache_dir(cache_dir: str | None = None) -> str:
    """The Hugging Face hub cache folder that will be searched."""
    if cache_dir:
        return cache_dir
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _cached_hf_file(repo_id: str, filenames: tuple[str, ...], cache_dir: str | None) -> str | None:
    from huggingface_hub import hf_hub_download

    for filename in filenames:
        try:
            return hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=cache_dir, local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss means "not cached"; the caller reports it
            continue
    return None


#: What to say after "On a connected machine run ...", for a CLIP backbone.
BACKBONE_ADVICE = ("pass a local file as --backbone ARCH:/path/to/weights. "
                   "For a smoke run without weights use --backbone tiny-random.")


def _missing(what: str, looked: list[str], fetch_hint: str, offline: bool, cause: Exception | None = None,
             advice: str = BACKBONE_ADVICE) -> None:
    if offline:
        mode = "HF_HUB_OFFLINE=1 is set, so nothing was downloaded"
    elif isinstance(cause, ServerUnreachableError):
        mode = "the download server cannot be reached"
    else:
        mode = "the download failed"
    detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0][:200]})" if cause else ""
    raise WeightsNotFoundError(
        f"weights for {what} are not on this machine and {mode}{detail}. Looked in: {'; '.join(looked)}. "
        f"On a connected machine run: {fetch_hint} — then copy the Hugging Face cache folder to this machine "
        f"(or set HF_HOME/HF_HUB_CACHE to it), or {advice}"
    ) from cause


def resolve_tag_checkpoint(arch: str, tag: str, *, cache_dir: str | None = None, offline: bool | None = None) -> str:
    """Local path of the checkpoint for an open_clip ``arch:tag``, downloading it when allowed."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        if arch not in open_clip.list_models():
            raise UsageError(f"unknown backbone architecture '{arch}' (see `zsad models` or open_clip.list_models())")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise UsageError(f"unknown pretrained tag '{tag}' for {arch}; known tags: {', '.join(tags) or 'none'}")
    offline = offline_from_env() if offline is None else offline
    looked: list[str] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)  # "org/repo/" names the default file; "org/repo/f.bin" one file
        names = (filename,) if filename else _WEIGHT_FILES
        found = _cached_hf_file(repo_id, names, cache_dir)
        if found:
            return found
        looked.append(f"Hugging Face cache {hf_cache_dir(cache_dir)} for {repo_id} ({', '.join(names)})")
    url = cfg.get("url", "")
    if url:
        url_cache = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if url_cache.is_file():
            return str(url_cache)
        looked.append(str(url_cache))
    hint = f"python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{tag}')\""
    if offline:
        _missing(f"{arch}:{tag}", looked, hint, offline)
    try:
        if hub or url:
            check_reachable(hub_endpoint() if hub else url)  # open_clip prefers the Hub when the tag names a repo
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types; all mean "missing"
        _missing(f"{arch}:{tag}", looked, hint, offline, exc)
    raise AssertionError("unreachable")


def snapshot_dir(repo_id: str, *, what: str, cache_dir: str | None = None, offline: bool | None = None,
                 allow_patterns: list[str] | None = None, required_file: str | None = None,
                 advice: str = BACKBONE_ADVICE) -> str:
    """Local snapshot folder of a Hub repository: the HF cache first, then (unless offline) a download. A
    cached snapshot without ``required_file`` counts as missing. Misses raise the one clear message."""
    from huggingface_hub import snapshot_download

    offline = offline_from_env() if offline is None else offline
    try:
        path = snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=allow_patterns, local_files_only=True)
        if required_file is None or (Path(path) / required_file).is_file():
            return path
    except Exception:  # noqa: BLE001 - any miss means "not cached"; reported below
        pass
    looked = [f"Hugging Face cache {hf_cache_dir(cache_dir)} for {repo_id}"]
    hint = f"huggingface-cli download {repo_id}"
    if offline:
        _missing(what, looked, hint, offline, advice=advice)
    try:
        check_reachable(hub_endpoint())
        return snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=allow_patterns)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types; all mean "missing"
        _missing(what, looked, hint, offline, exc, advice=advice)
    raise AssertionError("unreachable")


def resolve_hf_hub_dir(repo_id: str, *, cache_dir: str | None = None, offline: bool | None = None) -> str:
    """Local snapshot folder of an open_clip model on the Hub (config + weights)."""
    return snapshot_dir(repo_id, what=f"hf-hub:{repo_id}", cache_dir=cache_dir, offline=offline,
                        allow_patterns=["open_clip_config.json", *_WEIGHT_FILES],
                        required_file="open_clip_config.json")


def check_weights_file(path: str) -> str:
    """A local checkpoint given by path must exist and be a file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"weights file {p} does not exist (from --backbone ARCH:{path})")
    return str(p)


def hf_hub_model_config(repo_id: str, *, cache_dir: str | None = None, offline: bool | None = None) -> dict:
    """``model_cfg`` of an open_clip model on the Hub (its ``open_clip_config.json`` only: no weights fetched)."""
    import json

    folder = snapshot_dir(repo_id, what=f"hf-hub:{repo_id}", cache_dir=cache_dir, offline=offline,
                          allow_patterns=["open_clip_config.json"], required_file="open_clip_config.json")
    try:
        config = json.loads((Path(folder) / "open_clip_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"hf-hub:{repo_id}: unreadable open_clip_config.json ({exc})") from None
    return dict(config.get("model_cfg") or {})
