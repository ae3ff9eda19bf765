"""Run a published zero-shot protocol on a dataset and write its table beside the published numbers.

Usage::

    python evaluation/run_protocol.py musc-mvtec --data /data/mvtec_anomaly_detection --out runs/musc-mvtec
    python evaluation/run_protocol.py anomalyclip-visa --data /data/visa --adapter adapters/anomalyclip-mvtec
    python evaluation/run_protocol.py --list

The protocols (method, backbone, its MLP activation, input size, AUPRO variant, the method options the paper used
such as MuSc's blocks and RsCIN window sizes, the adapter settings of the released checkpoints, published numbers
and their sources) are in ``evaluation/published.yaml``. Each run passes every one of those settings to
``zsad.evaluate.evaluate`` (resumable: ``--resume``), then writes ``OUT/comparison.md`` and
``OUT/comparison.json``: zsad's mean per metric, the published number and the difference, in percent, and every
setting of the run beside the published one. ``--backbone``/``--image-size`` override the protocol (e.g.
``tiny-random`` for a smoke run; the protocol's block numbers then give way to the method's default for that
backbone), ``--activation`` overrides the protocol's activation (``auto``: the method's own choice, see
``zsad.detector.resolve_activation``; the table lists what ran) and ``--set KEY=VALUE`` changes or adds a method
option (VALUE is YAML: ``--set rscin_ks=[1,8,9]``); ``same_settings_as_published`` is then false and the table
lists each difference, so nobody mistakes the run for a reproduction.

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
ORDER = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "aupimo")
#: Top-level settings every protocol fixes (``published_<key>`` in a protocol overrides the published value).
TOP_SETTINGS = ("method", "backbone", "activation", "image_size", "aupro_variant")


def load_protocols(path: Path = PUBLISHED) -> dict[str, dict[str, Any]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _plain(value: Any) -> Any:
    """Tuples as lists, so a setting read from YAML, JSON or a config dataclass compares equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(f"{prefix}{key}.", value))
        else:
            out[f"{prefix}{key}"] = _plain(value)
    return out


def published_settings(protocol: dict[str, Any]) -> dict[str, Any]:
    """Every setting of the published run, flat: ``method``, ``backbone``, ``activation``, ``image_size``,
    ``aupro_variant``, ``method_options.<name>`` and ``adapter.<field>`` (nested fields joined with dots)."""
    found = {key: protocol.get(f"published_{key}", protocol[key]) for key in TOP_SETTINGS}
    found.update(_flatten("method_options.", protocol.get("method_options") or {}))
    found.update(_flatten("adapter.", protocol.get("adapter_settings") or {}))
    return found


def _adapter_fields(adapter: str | None) -> dict[str, Any]:
    if not adapter:
        return {}
    try:
        return json.loads((Path(adapter) / "adapter.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"run_protocol: cannot read {adapter}/adapter.json ({exc}); its settings count as differences",
              file=sys.stderr)
        return {}


def plan(protocol: dict[str, Any], backbone: str | None = None, image_size: int | None = None,
         overrides: dict[str, Any] | None = None, adapter: str | None = None,
         activation: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The method options to run with (the protocol's, then ``overrides``) and the run's settings, flat as
    :func:`published_settings` gives the paper's. Another backbone than the protocol's drops the protocol's
    ``layers`` (block numbers of its backbone) for the method's default, recorded as such."""
    options = {k: _plain(v) for k, v in (protocol.get("method_options") or {}).items()}
    used = {"method": protocol["method"], "backbone": backbone or protocol["backbone"],
            "activation": activation or protocol["activation"], "image_size": image_size or protocol["image_size"],
            "aupro_variant": protocol["aupro_variant"]}
    if used["backbone"] != protocol["backbone"] and "layers" in options:
        del options["layers"]
        used["method_options.layers"] = f"method default for {used['backbone']}"
    options.update({k: _plain(v) for k, v in (overrides or {}).items()})
    used.update(_flatten("method_options.", options))
    fields = _adapter_fields(adapter)
    for key in _flatten("adapter.", protocol.get("adapter_settings") or {}):
        value: Any = fields
        for part in key.split(".")[1:]:
            value = value.get(part, "(not recorded)") if isinstance(value, dict) else "(not recorded)"
        used[key] = _plain(value)
    return options, used


def setting_differences(published: dict[str, Any], used: dict[str, Any]) -> list[dict[str, Any]]:
    """``{"setting", "published", "run"}`` for every setting that differs or that only one side sets."""
    return [{"setting": key, "published": published.get(key, "(not set)"), "run": used.get(key, "(not set)")}
            for key in sorted(set(published) | set(used), key=lambda k: (k.count("."), k))
            if published.get(key, "(not set)") != used.get(key, "(not set)")]


def comparison(protocol: dict[str, Any], summary: dict[str, Any], settings: dict[str, Any],
               used: dict[str, Any] | None = None) -> dict[str, Any]:
    """zsad's means against the published numbers (percent) and their differences, for the metrics both have;
    ``used`` (:func:`plan`) is compared setting by setting with the published run."""
    rows = []
    for key in ORDER:
        ours = summary["mean"].get(key)
        published = protocol["numbers"].get(key)
        ours_pct = None if ours is None else round(100.0 * ours, 2)
        diff = None if ours_pct is None or published is None else round(ours_pct - float(published), 2)
        rows.append({"metric": key, "zsad": ours_pct, "published": published, "difference": diff})
    published = published_settings(protocol)
    if used is None:
        used = {**published, **{k: settings[k] for k in ("backbone", "activation", "image_size") if k in settings}}
    differences = setting_differences(published, used)
    return {"protocol": settings["protocol"], "dataset": protocol["dataset"], "source": protocol["source"],
            "settings": settings, "same_settings_as_published": not differences,
            "published_settings": published, "run_settings": used, "setting_differences": differences,
            "reference_only": bool(protocol.get("reference_only")), "rows": rows}


def comparison_markdown(found: dict[str, Any]) -> str:
    s = found["settings"]
    lines = [f"## {found['protocol']} — {found['dataset']}", "",
             f"zsad `{s['method']}`, backbone `{s['backbone']}` (activation `{s.get('activation')}`) at "
             f"{s['image_size']} px, AUPRO variant "
             f"`{s['aupro_variant']}`" + (f", adapter `{s['adapter']}`" if s.get("adapter") else "") + ".",
             f"Published: {found['source']}."]
    if s.get("random_weights"):
        lines.append("**The backbone has random weights: these numbers are meaningless (smoke run).**")
    if not found["same_settings_as_published"]:
        lines.append("**Settings differ from the published run: this is not a reproduction.**")
    if found["reference_only"]:
        lines.append("The published row is a different method, given as a reference point only.")
    lines += ["Pixel metrics: zsad at each image's original resolution; the papers at their input size.", "",
              "| metric | zsad | published | difference |", "|---|---|---|---|"]
    for row in found["rows"]:
        cells = ["-" if row[k] is None else f"{row[k]:.2f}" for k in ("zsad", "published", "difference")]
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    differences = found.get("setting_differences") or []
    lines += ["", "Settings compared with the published run (backbone, activation, input size, layers, method "
                  "options, adapter, AUPRO variant): "
              + ("all the same." if not differences else f"{len(differences)} differ:")]
    if differences:
        lines += ["", "| setting | published | this run |", "|---|---|---|"]
        lines += [f"| {d['setting']} | {d['published']} | {d['run']} |" for d in differences]
    return "\n".join(lines) + "\n"


def _parse_set(items: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        try:
            found[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            parser.error(f"--set {item!r}: VALUE is not YAML ({exc})")
    return found


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
    parser.add_argument("--activation", default=None, choices=["auto", "gelu", "quick_gelu"],
                        help="override the protocol's MLP activation (auto: the method's own choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change or add a method option (YAML value, e.g. rscin_ks=[1,8,9]); listed as a "
                             "difference from the published settings")
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
    options, used = plan(protocol, args.backbone, args.image_size, _parse_set(args.set, parser), args.adapter,
                         args.activation)
    settings = {"protocol": args.protocol, "method": protocol["method"], "backbone": used["backbone"],
                "activation": used["activation"], "image_size": used["image_size"],
                "aupro_variant": protocol["aupro_variant"], "precision": args.precision, "adapter": args.adapter,
                "categories": args.categories}
    try:
        settings["random_weights"] = parse_backbone_name(settings["backbone"]).random_weights
    except ZsadError as exc:
        parser.error(str(exc))
    config = EvaluateConfig(
        data=Path(args.data), out=out, method=settings["method"], backbone=settings["backbone"],
        activation=settings["activation"], image_size=settings["image_size"], aupro_variant=settings["aupro_variant"],
        device=args.device, precision=args.precision, batch_size=args.batch_size, resume=args.resume,
        categories=tuple(c.strip() for c in args.categories.split(",")) if args.categories else None,
        method_options={**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()},
                        **({"adapter": args.adapter} if args.adapter else {})},
    )
    try:
        summary = evaluate(config)
    except ZsadError as exc:
        print(f"run_protocol: error: {exc}", file=sys.stderr)
        return exc.exit_code
    used["activation"] = settings["activation"] = summary.get("activation", used["activation"])  # "auto" resolved
    found = comparison(protocol, summary, settings, used)
    (out / "comparison.json").write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    table = comparison_markdown(found)
    (out / "comparison.md").write_text(table, encoding="utf-8")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
