"""Run a published zero-shot protocol on a dataset and write its table beside the published numbers.

Usage::

    python evaluation/run_protocol.py musc-mvtec --data /data/mvtec_anomaly_detection --out runs/musc-mvtec
    python evaluation/run_protocol.py anomalyclip-visa --data /data/visa --adapter adapters/anomalyclip-mvtec
    python evaluation/run_protocol.py --list

The protocols (method, backbone, input size, AUPRO variant, published numbers and their source) are in
``evaluation/published.yaml``. Each run calls ``zsad.evaluate.evaluate`` (resumable: ``--resume``), then writes
``OUT/comparison.md`` and ``OUT/comparison.json``: zsad's mean per metric, the published number and the
difference, in percent. ``--backbone``/``--image-size`` override the protocol (e.g. ``tiny-random`` for a
smoke run); the table then says the settings differ from the paper's, so nobody mistakes it for a reproduction.

Known differences from the papers' pipelines, stated in every table: zsad computes pixel metrics at each
image's original resolution (the papers at 518 px or 256 px), and MuSc in zsad keeps one batch per category.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PUBLISHED = HERE / "published.yaml"
ORDER = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


def load_protocols(path: Path = PUBLISHED) -> dict[str, dict[str, Any]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def comparison(protocol: dict[str, Any], summary: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """zsad's means against the published numbers (percent) and their differences, for the metrics both have."""
    rows = []
    for key in ORDER:
        ours = summary["mean"].get(key)
        published = protocol["numbers"].get(key)
        ours_pct = None if ours is None else round(100.0 * ours, 2)
        diff = None if ours_pct is None or published is None else round(ours_pct - float(published), 2)
        rows.append({"metric": key, "zsad": ours_pct, "published": published, "difference": diff})
    same = all(settings[k] == protocol[k] for k in ("backbone", "image_size"))
    return {"protocol": settings["protocol"], "dataset": protocol["dataset"], "source": protocol["source"],
            "settings": settings, "same_settings_as_published": same,
            "reference_only": bool(protocol.get("reference_only")), "rows": rows}


def comparison_markdown(found: dict[str, Any]) -> str:
    s = found["settings"]
    lines = [f"## {found['protocol']} — {found['dataset']}", "",
             f"zsad `{s['method']}`, backbone `{s['backbone']}` at {s['image_size']} px, AUPRO variant "
             f"`{s['aupro_variant']}`" + (f", adapter `{s['adapter']}`" if s.get("adapter") else "") + ".",
             f"Published: {found['source']}."]
    if s.get("random_weights"):
        lines.append("**The backbone has random weights: these numbers are meaningless (smoke run).**")
    if not found["same_settings_as_published"]:
        lines.append("**Settings differ from the published run (backbone or size): this is not a reproduction.**")
    if found["reference_only"]:
        lines.append("The published row is a different method, given as a reference point only.")
    lines += ["Pixel metrics: zsad at each image's original resolution; the papers at their input size.", "",
              "| metric | zsad | published | difference |", "|---|---|---|---|"]
    for row in found["rows"]:
        cells = ["-" if row[k] is None else f"{row[k]:.2f}" for k in ("zsad", "published", "difference")]
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    protocols = load_protocols()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", nargs="?", choices=sorted(protocols))
    parser.add_argument("--list", action="store_true", help="list the protocols and exit")
    parser.add_argument("--data", help="dataset root in its usual layout (MVTec AD, VisA, BTAD, MPDD)")
    parser.add_argument("--out", default=None, help="output folder (default runs/<protocol>)")
    parser.add_argument("--adapter", default=None, help="learned-prompt adapter (anomalyclip protocols)")
    parser.add_argument("--backbone", default=None, help="override the protocol's backbone (smoke runs)")
    parser.add_argument("--image-size", type=int, default=None, help="override the protocol's input size")
    parser.add_argument("--categories", default=None, help="comma-separated subset (the table then is partial)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", help="fp32 as in the papers (default); fp16 for speed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    if args.list or not args.protocol:
        for name, p in protocols.items():
            print(f"{name:20s} {p['method']:12s} {p['dataset']}")
        return 0
    if not args.data:
        parser.error("--data is required")
    protocol = protocols[args.protocol]
    if protocol.get("needs_adapter") and not args.adapter:
        parser.error(f"protocol {args.protocol} needs --adapter (train one with zsad train-prompts or import the "
                     f"official checkpoint with zsad adapters import-anomalyclip; see adapters/README.md)")

    from zsad.backbones.names import parse_backbone_name
    from zsad.errors import ZsadError
    from zsad.evaluate import EvaluateConfig, evaluate

    out = Path(args.out or Path("runs") / args.protocol)
    settings = {"protocol": args.protocol, "method": protocol["method"],
                "backbone": args.backbone or protocol["backbone"],
                "image_size": args.image_size or protocol["image_size"],
                "aupro_variant": protocol["aupro_variant"], "precision": args.precision, "adapter": args.adapter,
                "categories": args.categories}
    try:
        settings["random_weights"] = parse_backbone_name(settings["backbone"]).random_weights
    except ZsadError as exc:
        parser.error(str(exc))
    config = EvaluateConfig(
        data=Path(args.data), out=out, method=settings["method"], backbone=settings["backbone"],
        image_size=settings["image_size"], aupro_variant=settings["aupro_variant"], device=args.device,
        precision=args.precision, batch_size=args.batch_size, resume=args.resume,
        categories=tuple(c.strip() for c in args.categories.split(",")) if args.categories else None,
        method_options={"adapter": args.adapter} if args.adapter else {},
    )
    try:
        summary = evaluate(config)
    except ZsadError as exc:
        print(f"run_protocol: error: {exc}", file=sys.stderr)
        return exc.exit_code
    found = comparison(protocol, summary, settings)
    (out / "comparison.json").write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    table = comparison_markdown(found)
    (out / "comparison.md").write_text(table, encoding="utf-8")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
