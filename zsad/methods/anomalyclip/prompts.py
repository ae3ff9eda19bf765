"""AnomalyCLIP's object-agnostic prompt learner and its deep-prompt text encoder.

Source: Zhou et al., "AnomalyCLIP", ICLR 2024 (arXiv 2310.18961); zqhang/AnomalyCLIP ``prompt_ensemble.py``
(``AnomalyCLIP_PromptLearner``) and ``AnomalyCLIP_lib/AnomalyCLIP.py`` (``ResidualAttentionBlock_learnable_token``).

Two sentences, ``"[v_1 .. v_E] object."`` (normal) and ``"[w_1 .. w_E] damaged object."`` (anomalous): the ``E``
word embeddings after the start token are learned, one set per state. Deep tokens: at the input of text blocks
``2 .. depth`` (1-based) the ``deep_length`` embeddings after the start token are *overwritten* by a learned set
per block (official issue #75: replaced, not appended). The official code casts the deep tokens to fp16 before
inserting them; ``round_deep_fp16`` keeps that rounding, so imported checkpoints give the official features.
Text features are the final layer norm at the end-of-text token, through ``text_projection``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from zsad.backbones import ClipBackbone
from zsad.errors import AdapterError, UsageError

#: The words after the learned context, per state (normal, anomalous); the official ``state_*_list``.
STATE_WORDS: tuple[str, str] = ("object.", "damaged object.")
#: Placeholder word whose embeddings are replaced by the learned context (as in the official code).
_PLACEHOLDER = "X"

#: The published design: 12 context words per state, 4 deep tokens in text blocks 2-9 (``depth`` 9).
DEFAULT_N_CTX = 12
DEFAULT_DEEP_LENGTH = 4
DEFAULT_DEEP_DEPTH = 9


@dataclass(frozen=True)
class PromptShape:
    """Sizes of the learned prompts. ``deep_depth`` counts like the official ``learnabel_text_embedding_depth``:
    blocks ``1 .. deep_depth - 1`` (0-based) get deep tokens, so ``deep_depth=1`` means none."""

    n_ctx: int = DEFAULT_N_CTX
    deep_length: int = DEFAULT_DEEP_LENGTH
    deep_depth: int = DEFAULT_DEEP_DEPTH
    round_deep_fp16: bool = True

    @property
    def n_deep(self) -> int:
        return self.deep_depth - 1

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, text_layers: int, context_length: int, error: type[Exception] = UsageError) -> None:
        """Raise ``error`` with a plain message when these sizes cannot work with a text tower."""
        if self.n_ctx < 1:
            raise error(f"prompt length must be at least 1, got {self.n_ctx}")
        if not 1 <= self.deep_depth <= text_layers:
            raise error(f"deep-prompt depth {self.deep_depth} is impossible for a text tower of {text_layers} blocks "
                        f"(use 1..{text_layers}; 1 = no deep tokens)")
        if self.n_deep and not 1 <= self.deep_length <= self.n_ctx:
            raise error(f"deep-prompt length {self.deep_length} must be in 1..{self.n_ctx} (the prompt length), so "
                        f"deep tokens overwrite learned context only")
        longest = 2 + self.n_ctx + 3  # start, context, "damaged object ." (3 tokens), end
        if longest > context_length:
            raise error(f"prompt length {self.n_ctx} does not fit the text context of {context_length} tokens")


def resolve_shape(backbone: ClipBackbone, n_ctx: int = DEFAULT_N_CTX, deep_length: int = DEFAULT_DEEP_LENGTH,
                  deep_depth: int | None = None, round_deep_fp16: bool = True) -> PromptShape:
    """The prompt sizes for ``backbone``: ``deep_depth=None`` is the published 9, clipped to the text depth."""
    layers = text_layers(backbone)
    depth = min(DEFAULT_DEEP_DEPTH, layers) if deep_depth is None else deep_depth
    shape = PromptShape(n_ctx=n_ctx, deep_length=deep_length, deep_depth=depth, round_deep_fp16=round_deep_fp16)
    shape.check(layers, context_length(backbone))
    return shape


def text_layers(backbone: ClipBackbone) -> int:
    return len(backbone.model.transformer.resblocks)


def text_width(backbone: ClipBackbone) -> int:
    return int(backbone.model.token_embedding.weight.shape[1])


def context_length(backbone: ClipBackbone) -> int:
    return int(backbone.model.positional_embedding.shape[0])


class PromptLearner(nn.Module):
    """The learned tensors: ``ctx_normal``/``ctx_anomalous`` ``[E, W]`` and ``deep_prompts`` ``[depth-1, T, W]``.

    Initialised N(0, 0.02) like the official learner; the official unused ``compound_prompt_projections``
    (8 x Linear(768, 896), 5.5 M parameters that the forward pass never reads) are left out.
    """

    TENSOR_NAMES = ("ctx_normal", "ctx_anomalous", "deep_prompts")

    def __init__(self, shape: PromptShape, width: int) -> None:
        super().__init__()
        self.shape = shape
        self.width = width
        self.ctx_normal = nn.Parameter(torch.empty(shape.n_ctx, width).normal_(std=0.02))
        self.ctx_anomalous = nn.Parameter(torch.empty(shape.n_ctx, width).normal_(std=0.02))
        self.deep_prompts = nn.Parameter(torch.empty(shape.n_deep, shape.deep_length, width).normal_(std=0.02))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().float().cpu().contiguous() for name in self.TENSOR_NAMES}

    @classmethod
    def from_tensors(cls, shape: PromptShape, tensors: dict[str, torch.Tensor], where: str = "adapter") -> PromptLearner:
        """Rebuild a learner; a missing tensor or a wrong shape is an :class:`AdapterError` naming ``where``."""
        missing = [n for n in cls.TENSOR_NAMES if n not in tensors]
        if missing:
            raise AdapterError(f"{where}: tensors {missing} are missing")
        width = int(tensors["ctx_normal"].shape[-1])
        learner = cls(shape, width)
        for name in cls.TENSOR_NAMES:
            expected = tuple(getattr(learner, name).shape)
            got = tuple(tensors[name].shape)
            if got != expected:
                raise AdapterError(f"{where}: tensor '{name}' has shape {list(got)}, expected {list(expected)} "
                                   f"for prompt sizes {shape.to_dict()}")
            with torch.no_grad():
                getattr(learner, name).copy_(tensors[name].float())
        return learner


class PromptTextEncoder(nn.Module):
    """The frozen text tower run with learned prompts: ``encoder(learner) -> [2, D]`` (normal, anomalous),
    unnormalised. Token embeddings of the fixed words are computed once (the official ``token_prefix/suffix``)."""

    def __init__(self, backbone: ClipBackbone, shape: PromptShape) -> None:
        super().__init__()
        model = backbone.model
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise UsageError(f"backbone '{backbone.spec.name}' pools text with '{model.text_pool_type}'; AnomalyCLIP "
                             f"needs end-of-text (argmax) pooling as in OpenAI CLIP")
        shape.check(text_layers(backbone), context_length(backbone))
        self.backbone = backbone
        self.shape = shape
        placeholder = " ".join([_PLACEHOLDER] * shape.n_ctx)
        ids = backbone.tokenizer([f"{placeholder} {words}" for words in STATE_WORDS]).to(backbone.device)
        with torch.no_grad():
            embedded = model.token_embedding(ids).float()
        self.register_buffer("token_prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedded[:, 1 + shape.n_ctx:].clone(), persistent=False)
        self.register_buffer("eot_index", ids.argmax(dim=-1), persistent=False)

    def forward(self, learner: PromptLearner) -> torch.Tensor:
        model = self.backbone.model
        shape = self.shape
        ctx = torch.stack([learner.ctx_normal, learner.ctx_anomalous]).float()
        x = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        x = x + model.positional_embedding.float()
        batch_first = getattr(model.transformer, "batch_first", True)
        for index, block in enumerate(model.transformer.resblocks):
            if 1 <= index <= shape.n_deep:  # official: blocks 2..depth, one learned set each, overwriting
                deep = learner.deep_prompts[index - 1]
                if shape.round_deep_fp16:
                    deep = deep.half().to(x.dtype)  # the official `.half()`; gradients pass through the cast
                deep = deep.unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], deep, x[:, 1 + shape.deep_length:]], dim=1)
            if batch_first:
                x = block(x, attn_mask=model.attn_mask)
            else:
                x = block(x.transpose(0, 1), attn_mask=model.attn_mask).transpose(0, 1)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.eot_index]
        projection = model.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection
