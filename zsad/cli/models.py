"""``zsad models``: the registered methods and the known backbones."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list methods and backbones")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsad.backbones import KNOWN_BACKBONES
    from zsad.methods import list_methods, method_class

    print("methods:")
    for name in list_methods():
        print(f"  {name:14s} {method_class(name).summary}")
    print("backbones (any open_clip ViT ARCH:TAG works too; see open_clip.list_pretrained()):")
    for name, description in KNOWN_BACKBONES:
        print(f"  {name:34s} {description}")
    from zsad.backbones.timm import KNOWN_TIMM_BACKBONES

    print("backbone families:")
    print("  open_clip CLIP  ARCH:TAG, ARCH:random, ARCH:/path, hf-hub:ORG/REPO: image and text towers, every method "
          "but anomalydino")
    print("  timm (vision)   timm:MODEL, timm:MODEL:random, timm:MODEL:/path: no text tower; musc, anomalydino "
          "(DINOv2), and any method with --reference")
    print("vision-only backbones (any timm ViT with a pretrained tag works too; see timm.list_pretrained()):")
    for name, description in KNOWN_TIMM_BACKBONES:
        print(f"  {name:46s} {description}")
    from zsad.backbones.radio import KNOWN_RADIO_BACKBONES

    print("RADIO (vision only; radio:ARCH, radio:ARCH:random, radio:ARCH:/path; vfm, musc, --reference):")
    for name, description in KNOWN_RADIO_BACKBONES:
        print(f"  {name:46s} {description}")
    return 0
