"""What a method asks of its backbone, recorded by running it once: the ``tokens`` call it makes (and which
outputs it reads), and the sentences it embeds. The export then holds exactly that, whatever the method."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from zsad.backbones.base import Backbone, TokenOutput
from zsad.backbones.export_folder import TokenCall
from zsad.errors import UsageError


class _Reads(dict):
    """A dict that notes which keys were read."""

    def __init__(self, values: dict, kind: str, seen: set[str]) -> None:
        super().__init__(values)
        self._kind, self._seen = kind, seen

    def __getitem__(self, key):
        self._seen.add(f"{self._kind}.{int(key)}")
        return super().__getitem__(key)


def record_token_call(backbone: Backbone, method: Any, images: torch.Tensor) -> TokenCall:
    """Run ``method.extract(images)`` once and return the one ``tokens`` call it made."""
    calls: list[tuple[tuple[int, ...], bool, int | None]] = []
    seen: set[str] = set()
    original = backbone.tokens

    def recording(images, layers, *, vv=False, vv_start=None) -> TokenOutput:
        out = original(images, layers, vv=vv, vv_start=vv_start)
        calls.append((tuple(backbone.check_layers(layers)), bool(vv), vv_start if vv else None))
        return TokenOutput(layers=_Reads(out.layers, "layers", seen), pooled=out.pooled, cls_raw=out.cls_raw,
                           plain=_Reads(out.plain, "plain", seen))

    backbone.tokens = recording
    try:
        method.extract(images)
    finally:
        del backbone.tokens
    if len(calls) != 1:
        raise UsageError(f"method '{method.name}' calls the backbone {len(calls)} times per batch; only methods "
                         f"with one token pass can be exported")
    layers, vv, vv_start = calls[0]
    order = {name: i for i, name in enumerate(f"{k}.{n}" for n in layers for k in ("layers", "plain"))}
    return TokenCall(layers=layers, vv=vv, vv_start=vv_start, outputs=tuple(sorted(seen, key=order.__getitem__)))


class TextRecorder:
    """Sentence -> unnormalised embedding, for every sentence the method embeds while recording is on."""

    def __init__(self) -> None:
        self.rows: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def on(self, backbone: Backbone) -> Iterator[TextRecorder]:
        original = backbone.encode_text

        def recording(sentences, batch_size: int = 256) -> torch.Tensor:
            out = original(sentences, batch_size)
            for sentence, row in zip(sentences, out):
                self.rows.setdefault(sentence, row.detach().float().cpu().clone())
            return out

        backbone.encode_text = recording
        try:
            yield self
        finally:
            del backbone.encode_text

    def table(self, embed_dim: int) -> tuple[list[str], torch.Tensor]:
        sentences = list(self.rows)
        if not sentences:
            return [], torch.empty(0, embed_dim)
        return sentences, torch.stack([self.rows[s] for s in sentences])
