"""RADIO v2.5 (NVlabs) as a pure-torch vision backbone: AnomalyVFM's published backbone.

The architecture, as NVlabs/RADIO builds ``radio_v2.5-l`` (``radio/radio_model.py``, ``radio/vit_patch_generator.py``)
and as AnomalyVFM re-implements it without timm (MaticFuc/AnomalyVFM ``radio_local.py``): a ViT-L/16 (24 blocks,
width 1024, 16 heads, LayerNorm eps 1e-6, exact GELU, no final norm), patches cut in (channel, row, column) order and
embedded by a bias-free linear layer, 8 prefix tokens (3 summary "CLS" tokens and registers) put in front *without*
position embedding, and a 128 x 128 table of patch position embeddings resized to the input's grid. CLIP mean/std
are the model's input conditioner; zsad applies them in :meth:`Backbone.preprocess`, like every backbone.

The two official code paths resize the table differently: the torch-hub model (``ViTPatchGenerator`` in eval mode,
which AnomalyVFM's ``train.py`` / ``test.py`` load, so the published numbers) bilinearly, ``radio_local.py`` (the
Hugging Face release and anomalib's port) bicubically, both ``align_corners=False``. ``pos_interpolation`` picks;
AnomalyVFM's method asks for bilinear.

Outputs through the common :meth:`tokens` call: ``layers[i]`` is ``[B, 1 + L, C]``, the first prefix token then the
patch tokens after block ``i``; ``cls_raw`` is RADIO's *summary*, the prefix tokens ``summary_idxs`` (0, 1, 2)
concatenated (``[B, 3C]``, what AnomalyVFM's image head reads); ``pooled`` is the same summary.

Names (:mod:`zsad.backbones.names`): ``radio:v2.5-l`` (weights ``nvidia/RADIO-L`` ``model.safetensors`` from the
Hugging Face cache), ``radio:v2.5-l:random``, ``radio:v2.5-l:/path`` (a safetensors file, or a torch state dict read with
``weights_only=True``) and ``radio:tiny:random`` (a tiny RADIO-style model built in code for tests).
Licence: RADIO v2.5 weights are under the NVIDIA Source Code License-NC (non-commercial).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from zsad.backbones.base import Backbone, TokenOutput
from zsad.backbones.names import BackboneSpec, parse_backbone_name
from zsad.errors import UsageError, random_weights_message

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Hugging Face repository of RADIO v2.5-L (its ``model.safetensors`` keys start with ``radio_model.``)
HF_REPO = "nvidia/RADIO-L"
HF_FILE = "model.safetensors"
POS_MODES = ("bilinear", "bicubic")
RADIO_ADVICE = ("pass a local file as --backbone radio:v2.5-l:/path/to/model.safetensors. For a smoke run without "
                "weights use --backbone radio:tiny:random.")


@dataclass(frozen=True)
class RadioConfig:
    """The shape of a RADIO ViT."""

    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    prefix_tokens: int = 8
    summary_idxs: tuple[int, ...] = (0, 1, 2)
    pos_grid: int = 128
    #: the input size the model is meant for (AnomalyVFM: 768)
    native_size: int = 768


#: architectures a ``radio:`` name may give
CONFIGS = {
    "v2.5-l": RadioConfig(),
    # tiny, built in code (tests, smoke runs): same token layout, width 64 so AnomalyVFM's GroupNorm(32) fits
    "tiny": RadioConfig(width=64, depth=4, heads=4, pos_grid=8, native_size=64),
}
KNOWN_RADIO_BACKBONES: tuple[tuple[str, str], ...] = (
    ("radio:v2.5-l", "RADIO v2.5-L/16 (AnomalyVFM's backbone, --image-size 768; weights non-commercial)"),
    ("radio:v2.5-l:random", "RADIO v2.5-L architecture, random weights (speed benchmarks)"),
    ("radio:tiny:random", "tiny random RADIO-style model (tests and smoke runs)"),
)


class RadioAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class RadioMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class RadioBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (no LayerScale in v2.5)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = RadioAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = RadioMlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RadioViT(nn.Module):
    """The weights of a RADIO ViT in zsad's layout (``patch_embed``, ``prefix``, ``pos_embed``, ``blocks``)."""

    def __init__(self, config: RadioConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = nn.Linear(3 * c.patch_size * c.patch_size, c.width, bias=False)
        self.prefix = nn.Parameter(torch.randn(c.prefix_tokens, c.width) * c.width ** -0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, c.pos_grid * c.pos_grid, c.width) * c.width ** -0.5)
        self.blocks = nn.ModuleList(RadioBlock(c.width, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.register_buffer("summary_idxs", torch.tensor(c.summary_idxs, dtype=torch.long))


def resize_pos_table(table: torch.Tensor, grid: int, mode: str) -> torch.Tensor:
    """``[1, G*G, C]`` -> ``[1, grid*grid, C]``, ``align_corners=False``; the table itself when ``grid == G``
    (both official paths skip the resize then). Bilinear: the hub ``ViTPatchGenerator._get_pos_embeddings`` (eval,
    CPE mode); bicubic: AnomalyVFM ``radio_local.py`` ``_interpolate_pos_encoding``."""
    if mode not in POS_MODES:
        raise UsageError(f"unknown position-embedding interpolation '{mode}' (use {' or '.join(POS_MODES)})")
    side = math.isqrt(table.shape[1])
    if side == grid:
        return table
    width = table.shape[-1]
    grid_table = table.reshape(1, side, side, width).permute(0, 3, 1, 2).float()
    resized = F.interpolate(grid_table, size=(grid, grid), mode=mode, align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(1, grid * grid, width).to(table.dtype)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, (H/p)(W/p), 3 p p]``, each patch flattened in (channel, row, column) order (RADIO's
    ``Im2Patches``)."""
    batch, chans, height, width = images.shape
    rows, cols = height // patch, width // patch
    x = images.reshape(batch, chans, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(batch, rows * cols, chans * patch * patch)


class RadioBackbone(Backbone):
    """A frozen RADIO ViT behind the common ``tokens`` call (see the module doc)."""

    has_text = False
    #: RsCIN: the summary tokens' concatenation, L2-normalised like CLIP's embedding
    normalize_pooled = True
    #: AnomalyVFM: torchvision ``Resize((768, 768))`` on a PIL image is PIL's bilinear resize
    resize_filter = Image.BILINEAR

    def __init__(self, model: RadioViT, spec: BackboneSpec, image_size: int, *, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, pos_interpolation: str = "bilinear") -> None:
        super().__init__()
        patch = model.config.patch_size
        if image_size % patch:
            near = max(patch, round(image_size / patch) * patch)
            raise UsageError(f"image size {image_size} is not a multiple of the patch size {patch} of "
                             f"'{spec.name}'; use --image-size {near}")
        self._set_facts(spec, image_size=image_size, patch_size=patch, mean=mean, std=std,
                        pos_interpolation=pos_interpolation, activation="gelu")
        self.model = model.eval().requires_grad_(False)
        self._pos_cache: dict[tuple[int, str], torch.Tensor] = {}

    def with_pos_interpolation(self, mode: str) -> RadioBackbone:
        """This backbone resizing its position table with ``mode``, sharing the model; ``self`` when it already
        does."""
        if mode == self.pos_interpolation:
            return self
        if mode not in POS_MODES:
            raise UsageError(f"unknown position-embedding interpolation '{mode}' (use {' or '.join(POS_MODES)})")
        return RadioBackbone(self.model, self.spec, self.image_size, mean=self.mean.view(-1).tolist(),
                             std=self.std.view(-1).tolist(), pos_interpolation=mode).to(self.device)

    def with_activation(self, activation: str) -> RadioBackbone:
        return super().with_activation(self.activation if activation == "gelu" else activation)

    # -- facts -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.model.blocks)

    @property
    def width(self) -> int:
        return self.model.config.width

    @property
    def embed_dim(self) -> int:
        return self.width * len(self.model.summary_idxs)

    @property
    def summary_dim(self) -> int:
        return self.embed_dim

    @property
    def device(self) -> torch.device:
        return self.model.patch_embed.weight.device

    def pos_table(self, grid: int) -> torch.Tensor:
        """The position table resized to ``grid`` (cached per grid while the weights are frozen; recomputed when
        they take gradients)."""
        table = self.model.pos_embed
        if table.requires_grad or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return resize_pos_table(table, grid, self.pos_interpolation)
        key = (grid, self.pos_interpolation)
        cached = self._pos_cache.get(key)
        if cached is None or cached.device != table.device or cached.dtype != table.dtype:
            with torch.no_grad():
                cached = resize_pos_table(table, grid, self.pos_interpolation).clone()
            self._pos_cache[key] = cached
        return cached

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens entering block 0: the prefix tokens, then the patches with their position embeddings."""
        model = self.model
        patch = self.patch_size
        if images.shape[-1] != images.shape[-2] or images.shape[-1] % patch:
            raise UsageError(f"RADIO takes square inputs that are a multiple of {patch} px, got "
                             f"{tuple(images.shape[-2:])}")
        x = model.patch_embed(patchify(images.to(self.device, model.patch_embed.weight.dtype), patch))
        x = x + self.pos_table(images.shape[-1] // patch).to(x.dtype)
        prefix = model.prefix.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([prefix, x], dim=1)

    def forward_features(self, images: torch.Tensor, layers: Sequence[int] = ()) -> tuple[torch.Tensor, dict]:
        """Final tokens ``[B, P + L, C]`` and the outputs of the given 0-based blocks."""
        x = self.embed(images)
        wanted = set(layers)
        taps = {}
        for index, block in enumerate(self.model.blocks):
            x = block(x)
            if index in wanted:
                taps[index] = x
        return x, taps

    def summary(self, tokens: torch.Tensor) -> torch.Tensor:
        """RADIO's summary: the prefix tokens ``summary_idxs`` concatenated, ``[B, len(idxs) * C]``."""
        return tokens[:, self.model.summary_idxs].reshape(tokens.shape[0], -1)

    def tokens(self, images: torch.Tensor, layers: Sequence[int], *, vv: bool = False,
               vv_start: int | None = None) -> TokenOutput:
        """Tokens of the given 0-based blocks, each ``[B, 1 + L, C]`` (prefix token 0, then the patches); ``pooled``
        and ``cls_raw`` are the summary of the last block."""
        if vv:
            raise UsageError(f"value-value attention needs a CLIP backbone; '{self.spec.name}' is a RADIO model")
        wanted = self.check_layers(layers)
        final, taps = self.forward_features(images, wanted)
        skip = self.model.config.prefix_tokens
        chosen = {i: torch.cat([taps[i][:, :1], taps[i][:, skip:]], dim=1) for i in wanted}
        summary = self.summary(final)
        return TokenOutput(layers=chosen, pooled=summary, cls_raw=summary, plain=dict(chosen))


# -- weights ---------------------------------------------------------------------------------------------------

#: official key -> zsad key (after the prefix of the file's layout is removed)
_RENAMES = (
    ("model.patch_generator.embedder.weight", "patch_embed.weight"),
    ("model.patch_generator.cls_token.token", "prefix"),
    ("model.patch_generator.pos_embed", "pos_embed"),
    ("patch_generator.embedder.weight", "patch_embed.weight"),
    ("patch_generator.cls_token.token", "prefix"),
    ("patch_generator.pos_embed", "pos_embed"),
)
#: layouts: Hugging Face RADIO (``radio_model.``), AnomalyVFM's training (``net.``) and Hub release (``model.net.``)
LAYOUT_PREFIXES = ("radio_model.", "model.net.", "net.")
#: keys of the official files that zsad does not use (the teachers' adaptor heads; the input conditioner is read
#: separately)
_IGNORED_PREFIXES = ("adaptors.", "input_conditioner.")


def to_zsad_layout(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """An official RADIO state dict (any of :data:`LAYOUT_PREFIXES`, the torch-hub checkpoint's ``base_model.``,
    or zsad's own) as (zsad's keys, the input conditioner's ``norm_mean`` / ``norm_std``, the keys zsad does not
    know); :func:`load_state` refuses what is missing or misshapen."""
    prefix = next((p for p in LAYOUT_PREFIXES if any(k.startswith(p) for k in state)), "")
    out: dict[str, torch.Tensor] = {}
    conditioner: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        name = name[len("base_model."):] if name.startswith("base_model.") else name
        if name.startswith("input_conditioner."):
            conditioner[name.split(".")[-1]] = value
            continue
        if name.startswith(_IGNORED_PREFIXES):
            continue
        name = dict(_RENAMES).get(name, name)
        name = name[len("model."):] if name.startswith("model.blocks.") else name
        if name in _TOP_KEYS or name.startswith("blocks."):
            out[name] = value
        else:
            unknown.append(key)
    return out, conditioner, unknown


_TOP_KEYS = frozenset({"patch_embed.weight", "prefix", "pos_embed", "summary_idxs"})


def load_state(model: RadioViT, state: dict[str, torch.Tensor], where: str) -> None:
    """Load zsad-layout tensors into ``model``; a missing key or a shape that does not fit is one UsageError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and k != "summary_idxs"]
    if missing:
        raise UsageError(f"{where}: not RADIO weights for this architecture ({len(missing)} tensors missing, first "
                         f"{missing[0]!r})")
    for key, value in state.items():
        if key not in own:
            raise UsageError(f"{where}: unexpected tensor {key!r} (a RADIO with another depth?)")
        if key == "summary_idxs":
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            raise UsageError(f"{where}: tensor {key!r} has shape {tuple(value.shape)}, the architecture needs "
                             f"{tuple(own[key].shape)}")
    with torch.no_grad():
        for key, value in state.items():
            if key == "summary_idxs":
                model.summary_idxs = value.to(torch.long).clone()
            else:
                own[key].copy_(value.to(own[key].dtype))


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch checkpoint (read with ``weights_only=True``: no code runs; the
    torch-hub ``radio-v2.5-l_half.pth.tar`` pickles its training arguments, so it is refused: use
    ``nvidia/RADIO-L``'s ``model.safetensors``); a dict's ``state_dict_ema`` / ``state_dict`` is taken."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types; all mean "unreadable"
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UsageError(f"{path}: cannot be read as tensors only (weights_only=True: {first}); use "
                         f"{HF_REPO}'s {HF_FILE}") from None
    if isinstance(data, dict):
        for key in ("state_dict_ema", "state_dict", "model_state_dict"):
            if isinstance(data.get(key), dict):
                return dict(data[key])
        if all(isinstance(v, torch.Tensor) for v in data.values()):
            return dict(data)
    raise UsageError(f"{path}: no RADIO state dict in it (expected a dict of tensors, or state_dict / state_dict_ema)")


def resolve_radio_checkpoint(*, cache_dir: str | None = None, offline: bool | None = None) -> str:
    """Local path of RADIO v2.5-L's weights: ``nvidia/RADIO-L`` in the Hugging Face cache, then (unless offline) a
    download from the Hub; a miss is the one-line message."""
    from zsad import weights

    found = weights._cached_hf_file(HF_REPO, (HF_FILE,), cache_dir)
    if found:
        return found
    offline = weights.offline_from_env() if offline is None else offline
    looked = [f"Hugging Face cache {weights.hf_cache_dir(cache_dir)} for {HF_REPO} ({HF_FILE})"]
    hint = f"huggingface-cli download {HF_REPO} {HF_FILE}"
    if offline:
        weights._missing("radio:v2.5-l", looked, hint, offline, advice=RADIO_ADVICE)
    try:
        from huggingface_hub import hf_hub_download

        weights.check_reachable(weights.hub_endpoint())
        return hf_hub_download(HF_REPO, HF_FILE, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types; all mean "missing"
        weights._missing("radio:v2.5-l", looked, hint, offline, exc, advice=RADIO_ADVICE)
    raise AssertionError("unreachable")


def build_radio(arch: str, seed: int = 0) -> RadioViT:
    """A RADIO ViT of the named architecture with seeded random weights."""
    if arch not in CONFIGS:
        raise UsageError(f"unknown RADIO architecture '{arch}' (known: {', '.join(CONFIGS)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RadioViT(CONFIGS[arch])
        with torch.no_grad():  # LayerNorms start at 1/0; give them values so tests can see mistakes
            for module in model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.normal_(1.0, 0.1)
                    module.bias.normal_(0.0, 0.1)
    return model.eval()


def load_radio_backbone(name: str, *, image_size: int = 768, device: torch.device | str = "cpu",
                        cache_dir: str | None = None, offline: bool | None = None, activation: str | None = None,
                        pos_interpolation: str = "bilinear", warn_random: bool = True) -> RadioBackbone:
    """Build a frozen RADIO backbone in fp32 on ``device`` from a ``radio:`` name."""
    from zsad import weights

    spec = parse_backbone_name(name)
    if spec.family != "radio":
        raise UsageError(f"backbone '{name}' is not a RADIO name (radio:ARCH[:random|:/path])")
    if activation not in (None, "auto", "gelu"):
        raise UsageError(f"--activation {activation} applies to CLIP backbones; RADIO runs its own (gelu)")
    if pos_interpolation not in POS_MODES:
        pos_interpolation = "bilinear"
    if spec.arch not in CONFIGS:
        raise UsageError(f"unknown RADIO architecture '{spec.arch}' (known: {', '.join(CONFIGS)})")
    path = None  # found before the model is built: a missing file fails at once
    if not spec.random_weights:
        path = resolve_radio_checkpoint(cache_dir=cache_dir, offline=offline) if spec.kind == "tag" \
            else weights.check_weights_file(spec.source)
    model = build_radio(spec.arch)
    mean, std = CLIP_MEAN, CLIP_STD
    if path is not None:
        state, conditioner, unknown = to_zsad_layout(read_weights_file(path))
        if unknown:
            log.warning("%s: ignoring %d tensors zsad does not know (first: %s)", path, len(unknown), unknown[0])
        load_state(model, state, path)
        if "norm_mean" in conditioner and "norm_std" in conditioner:
            mean = tuple(conditioner["norm_mean"].float().view(-1).tolist())
            std = tuple(conditioner["norm_std"].float().view(-1).tolist())
    elif warn_random:
        log.warning(random_weights_message(name))
    backbone = RadioBackbone(model, spec, image_size, mean=mean, std=std, pos_interpolation=pos_interpolation)
    return backbone.to(device)

