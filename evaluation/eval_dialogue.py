"""Evaluate a dialogue responder on a dataset (yes/no, defect type, location, count, faithfulness) and on the
held-out question bank (intent, polarity and refusal accuracy).

Usage::

    python evaluation/eval_dialogue.py --data /data/visa --out runs/dialogue-visa                    # grounded
    python evaluation/eval_dialogue.py --data /data/visa --lvlm HuggingFaceTB/SmolVLM-256M-Instruct \\
        --adapter adapters/smolvlm-mvtec --backbone ViT-L-14-336:openai --out runs/lvlm-visa
    python evaluation/eval_dialogue.py --data DATA --lvlm tiny-random --backbone tiny-random --image-size 112 ...
    python evaluation/eval_dialogue.py --bank --out runs/bank                    # held-out questions, grounded
    python evaluation/eval_dialogue.py --bank --lvlm tiny-random --out runs/bank-lvlm

With ``--data``, each test image is asked one held-out paraphrase per intent (yes/no, type, where, how many),
drawn in turn from the single-intent questions of ``evaluation/questions/heldout.yaml`` that match no template of
``prompts/dialogue.yaml`` (``--questions training``: the first training paraphrase, as before; ``--questions
FILE``: another bank). Only the test split is evaluated; with ``--adapter`` (or ``--trained-on``) the training
record it holds (:mod:`zsad.dialogue.training.overlap`) is read: without ``--categories`` the categories training
named are left out, and evaluation images with the bytes of a training image (sha256) or questions that are training
paraphrases are counted, written to ``OUT/overlap.json`` and the metrics, and refused (exit 2) unless
``--allow-overlap``. ``--bank [FILE]`` asks every question of the held-out bank (default
``evaluation/questions/heldout.yaml``, never read by the recogniser or by training) about each synthetic scenario
of :mod:`question_bank` and writes ``OUT/bank_metrics.json``, ``OUT/bank_metrics.md`` and
``OUT/bank_answers.jsonl``.

Evidence comes from the CLIP detector (``--detector clip``, default) or from the ground-truth masks
(``--detector ground-truth``: an upper bound that isolates the language side). Metrics (lvlm.md §4.6):

* yes/no: accuracy, balanced accuracy, F1 against the ground truth, with the anchored parser
  (:func:`zsad.dialogue.answer.replies.parse_yes_no`), per class and macro-averaged over classes (``yes_no``) and
  pooled (``yes_no_pooled``); unparsed answers count as wrong and are reported;
* type: top-1 accuracy and macro-F1 on true-positive anomalies with a known type;
* location: the true set is every grid cell covered >= 5 % by the mask; exact cell-set match, Jaccard and a
  one-neighbour hit on true positives; count accuracy;
* with an LVLM, the AUROC of the first answer token's P(yes) / (P(yes) + P(no)) (``auroc_first_token``);
* faithfulness: agreement of the stated verdict with the detector's, defects invented on images the detector
  calls normal, and (``--hint-flip``) the share of answers that follow a flipped hint.

With ``--data``, writes ``OUT/dialogue_metrics.json``, ``OUT/dialogue_metrics.md`` and ``OUT/answers.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import question_bank

from zsad.dialogue.answer.replies import parse_yes_no
from zsad.dialogue.evidence import Evidence, evidence_from_mask, evidence_from_result
from zsad.dialogue.tables import load_dialogue_tables
from zsad.dialogue.training.instructions import corrupt, fold_defect_type
from zsad.dialogue.training.judge import (
    binary_metrics,
    covered_cells,
    location_scores,
    macro_f1,
    parse_cells,
    parse_count,
    parse_type,
)
from zsad.errors import random_weights_message

#: held-out bank entries that ask one dataset intent (intent, polarity): yes/no about any defect, type, where, count
_BANK_INTENTS = {"anomaly": ("presence", "defect"), "type": ("type", None), "where": ("location", None),
                 "count": ("count", None)}


def _questions(class_name: str) -> dict[str, str]:
    """The first training paraphrase per intent (``--questions training``)."""
    tables = load_dialogue_tables()
    return {intent: qs[0].format(object=class_name) for intent, qs in tables.questions.items()}


def heldout_pools(bank: str | Path = question_bank.DEFAULT_BANK, seed: int = 0) -> dict[str, list[str]]:
    """Per dataset intent, the bank's questions asking only that (no defect type, no place), minus any that a
    template of ``prompts/dialogue.yaml`` matches, in a seeded order."""
    from zsad.dialogue.training.overlap import matches_any
    from zsad.errors import UsageError

    trained = [q for qs in load_dialogue_tables().questions.values() for q in qs]
    entries = question_bank.load_bank(bank)
    rng = random.Random(seed)
    pools = {}
    for intent, (asks, polarity) in _BANK_INTENTS.items():
        pool = [e.question for e in entries if e.intents == (asks,) and e.polarity == polarity and not e.types
                and e.region is None and not matches_any(e.question, trained)]
        if not pool:
            raise UsageError(f"question bank {bank}: no held-out '{asks}' question to ask")
        rng.shuffle(pool)
        pools[intent] = pool
    return pools


def _question_source(args: argparse.Namespace) -> Any:
    """``(class_name, n) -> {intent: question}`` for the n-th image evaluated."""
    if args.questions == "training":
        return lambda class_name, n: _questions(class_name)
    pools = heldout_pools(question_bank.DEFAULT_BANK if args.questions == "heldout" else args.questions, args.seed)
    return lambda class_name, n: {intent: pool[n % len(pool)] for intent, pool in pools.items()}


def evaluate_dialogue(records: list[dict[str, Any]], vocab: dict[str, Any]) -> dict[str, Any]:
    """Metrics from per-image records: ``truth`` / ``detector`` Evidence dicts and the ``answers`` per intent."""
    yes_pred = [parse_yes_no(r["answers"]["anomaly"]) for r in records]
    truth = [bool(r["truth"]["anomalous"]) for r in records]
    detector = [bool(r["detector"]["anomalous"]) for r in records]
    categories = sorted({r.get("category", "") for r in records})
    per_class = {c: binary_metrics([p for p, r in zip(yes_pred, records) if r.get("category", "") == c],
                                   [t for t, r in zip(truth, records) if r.get("category", "") == c])
                 for c in categories}
    macro = {k: float(np.mean([m[k] for m in per_class.values()])) for k in ("accuracy", "balanced_accuracy", "f1",
                                                                              "unparsed")}
    out: dict[str, Any] = {"n_images": len(records), "yes_no": {"n_classes": len(categories), **macro},
                           "yes_no_pooled": binary_metrics(yes_pred, truth)}
    p_yes = [r.get("p_yes") for r in records]
    if all(p is not None for p in p_yes) and len(set(truth)) == 2:
        from sklearn.metrics import roc_auc_score

        out["yes_no_pooled"]["auroc_first_token"] = float(roc_auc_score(truth, p_yes))
    tp = [i for i, r in enumerate(records) if truth[i] and detector[i]]
    typed = [i for i in tp if records[i]["truth"]["defect_type"]]
    if typed:
        predicted = [parse_type(records[i]["answers"]["type"], vocab) for i in typed]
        actual = [records[i]["truth"]["defect_type"] for i in typed]
        out["type"] = {"n": len(typed), "accuracy": float(np.mean([p == a for p, a in zip(predicted, actual)])),
                       "macro_f1": macro_f1(predicted, actual)}
    if tp:
        scores = [location_scores(parse_cells(records[i]["answers"]["where"]),
                                  set(records[i].get("truth_cells") or
                                      {reg["cell"] for reg in records[i]["truth"]["regions"]})) for i in tp]
        out["location"] = {"n": len(tp), **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]}}
        counts = [parse_count(records[i]["answers"]["count"]) == len(records[i]["truth"]["regions"]) for i in tp]
        out["count"] = {"n": len(tp), "accuracy": float(np.mean(counts))}
    agree = [p is not None and p == d for p, d in zip(yes_pred, detector)]
    normal_by_detector = [i for i, d in enumerate(detector) if not d]
    faith: dict[str, Any] = {"agreement_with_detector": float(np.mean(agree)) if agree else float("nan")}
    if normal_by_detector:
        faith["invented_defects"] = float(np.mean([yes_pred[i] is True for i in normal_by_detector]))
    flips = [r for r in records if "flipped_answer" in r]
    if flips:
        follows = [parse_yes_no(r["flipped_answer"]) == bool(r["flipped_anomalous"]) for r in flips]
        faith["follows_flipped_hint"] = float(np.mean(follows))
    out["faithfulness"] = faith
    return out


def markdown(metrics: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = ["# Dialogue evaluation", "", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
             "| group | metric | value |", "|---|---|---|"]
    for group, values in metrics.items():
        if isinstance(values, dict):
            for key, value in values.items():
                lines.append(f"| {group} | {key} | {value:.4f} |" if isinstance(value, float)
                             else f"| {group} | {key} | {value} |")
        else:
            lines.append(f"| - | {group} | {values} |")
    return "\n".join(lines) + "\n"


def _responder(args: argparse.Namespace) -> Any:
    from zsad.dialogue.answer.grounded import GroundedResponder

    if not args.lvlm:
        return GroundedResponder()
    from zsad.dialogue.lvlm import LvlmResponder

    responder = LvlmResponder.load(args.lvlm, adapter=args.adapter, device=args.device, precision=args.precision,
                                   cache_dir=args.cache_dir)
    responder.max_new_tokens = args.max_new_tokens
    if responder.random_weights:
        print(f"eval_dialogue: WARNING: {random_weights_message(args.lvlm, 'its answers are noise', model='LVLM')}",
              file=sys.stderr)
    return responder


def _write(out: Path, stem: str, payload: dict[str, Any], table: str, records: list[dict[str, Any]],
           answers_name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table)
    with open(out / answers_name, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def _training_record(args: argparse.Namespace) -> tuple[Any, str]:
    """The training record of ``--trained-on`` or ``--adapter`` and, when there is none, why."""
    from zsad.dialogue.training.overlap import read_record

    source = args.trained_on or args.adapter
    if not source:
        return None, "no --adapter or --trained-on: nothing was trained"
    record = read_record(source)
    if record is None:
        return None, f"{source} records no training data (an adapter from before zsad recorded it)"
    return record, ""


def plan_dataset(args: argparse.Namespace, record: Any) -> list[tuple[str, list[Any], list[dict[str, str]]]]:
    """``(category, test samples, questions per sample)`` to evaluate; without ``--categories``, those training
    named are left out (evaluation takes the test split of the others)."""
    from zsad.data.datasets import open_dataset
    from zsad.errors import UsageError

    dataset = open_dataset(args.data, categories=args.categories or None)
    categories = list(dataset.categories)
    if not args.categories and record is not None and record.categories:
        trained = [c for c in categories if c in record.categories]
        categories = [c for c in categories if c not in record.categories]
        if trained:
            print(f"eval_dialogue: leaving out the categories the adapter was trained on: {', '.join(trained)}",
                  file=sys.stderr)
        if not categories:
            raise UsageError(f"every category of {args.data} was named in training ({', '.join(trained)}); name "
                             "others with --categories or evaluate on another dataset")
    asked = _question_source(args)
    plan, n = [], 0
    for category in categories:
        samples = dataset.samples(category, "test")
        if args.limit:
            samples = samples[:args.limit]
        class_name = category.replace("_", " ")
        questions = [asked(class_name, n + k) for k in range(len(samples))]
        n += len(samples)
        plan.append((category, samples, questions))
    return plan


def check_overlap(args: argparse.Namespace, record: Any, reason: str, plan: list[Any],
                  bank_questions: list[str]) -> Any:
    """Compare the evaluation with the training ``record`` (None: not checked, for ``reason``); writes
    ``OUT/overlap.json``; refuses an overlap unless ``--allow-overlap``."""
    from zsad.dialogue.training.overlap import find_overlap, unchecked
    from zsad.errors import UsageError

    if record is None:
        overlap = unchecked(reason)
        if args.adapter or args.trained_on:
            print(f"eval_dialogue: WARNING: overlap with the training data not checked: {reason}", file=sys.stderr)
    else:
        images = [s.image_path for _, samples, _ in plan for s in samples]
        questions = [q for _, _, per_image in plan for asked in per_image for q in asked.values()] + bank_questions
        overlap = find_overlap(record, images, questions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlap.json").write_text(json.dumps(overlap.to_dict(), indent=2) + "\n")
    if overlap.found and not args.allow_overlap:
        raise UsageError(f"{overlap.message()}; pass --allow-overlap to evaluate anyway")
    return overlap


def run_dataset(args: argparse.Namespace, responder: Any, plan: list[Any] | None = None,
                overlap: Any = None) -> dict[str, Any]:
    from PIL import Image

    import zsad
    from zsad.data.datasets import load_mask
    from zsad.data.images import load_image
    from zsad.prompts import load_prompt_bank
    from zsad.visualize import overlay

    vocab = dict(load_prompt_bank().defects)
    plan = plan if plan is not None else plan_dataset(args, None)
    rng = random.Random(args.seed)
    records: list[dict[str, Any]] = []
    for category, samples, asked in plan:
        class_name = category.replace("_", " ")
        detector = None
        if args.detector != "ground-truth":
            detector = zsad.create(args.detector, backbone=args.backbone, device=args.device, precision=args.precision,
                                   image_size=args.image_size, threshold=args.threshold, class_name=class_name,
                                   cache_dir=args.cache_dir)
            results = detector.score([s.image_path for s in samples], class_name=class_name)
        for k, sample in enumerate(samples):
            questions = asked[k]
            image = load_image(sample.image_path)
            mask = (load_mask(sample.mask_path, image.size, sample.image_path) > 0 if sample.label
                    else np.zeros((image.size[1], image.size[0]), dtype=bool))
            truth = evidence_from_mask(mask, fold_defect_type(sample.defect_type), class_name, min_area_fraction=0.0005)
            shown: Image.Image | None = None
            if detector is None:
                evidence: Evidence = truth
            else:
                evidence = evidence_from_result(results[k], class_name)
                shown = overlay(image, results[k].anomaly_map)
            answers = {intent: responder.answer(q, evidence, image=image, overlay=shown)
                       for intent, q in questions.items()}
            record = {"image": str(sample.image_path), "category": category, "truth": truth.to_dict(),
                      "truth_cells": sorted(covered_cells(mask)), "detector": evidence.to_dict(),
                      "questions": questions, "answers": answers}
            if hasattr(responder, "yes_probability"):
                record["p_yes"] = responder.yes_probability(questions["anomaly"], evidence, image=image,
                                                            overlay=shown)
            if args.hint_flip:
                scored = evidence if evidence.score is not None else \
                    replace(evidence, score=0.9 if evidence.anomalous else 0.1, threshold=0.5)
                flipped = corrupt(scored, rng)
                if flipped.anomalous != evidence.anomalous:
                    record["flipped_answer"] = responder.answer(questions["anomaly"], flipped, image=image,
                                                                overlay=shown)
                    record["flipped_anomalous"] = flipped.anomalous
            records.append(record)
    metrics = evaluate_dialogue(records, vocab)
    settings = {"data": args.data, "split": "test", "categories": ",".join(c for c, _, _ in plan),
                "questions": args.questions, "responder": responder.name, "detector": args.detector,
                "backbone": args.backbone if args.detector != "ground-truth" else "-"}
    overlap_dict = overlap.to_dict() if overlap is not None else {"checked": False}
    _write(Path(args.out), "dialogue_metrics", {"settings": settings, "metrics": metrics, "overlap": overlap_dict},
           markdown(metrics, settings) + _overlap_markdown(overlap_dict), records, "answers.jsonl")
    return metrics


def _overlap_markdown(overlap: dict[str, Any]) -> str:
    if not overlap.get("checked"):
        return f"\nOverlap with the training data: not checked ({overlap.get('reason', 'no training record')}).\n"
    return (f"\nOverlap with the training data ({overlap['record']}): {overlap['images']} of "
            f"{overlap['eval_images']} images, {overlap['questions']} of {overlap['eval_questions']} questions.\n")


def bank_questions(args: argparse.Namespace) -> list[str]:
    """The questions ``--bank`` will ask (for the overlap check, before a model is loaded)."""
    entries = question_bank.load_bank(args.bank)
    return [e.question for e in (entries[:args.bank_limit] if args.bank_limit else entries)]


def run_bank(args: argparse.Namespace, responder: Any, overlap: Any = None) -> dict[str, Any]:
    """The held-out question bank asked about every scenario (:mod:`question_bank`)."""
    from zsad.dialogue.answer.grounded import GroundedResponder

    reader = responder.grounded.reader if hasattr(responder, "grounded") else responder.reader
    kinds = reader.vocabulary.kinds
    entries = question_bank.load_bank(args.bank, vocabulary=kinds)
    if args.bank_limit:
        entries = entries[:args.bank_limit]
    cases = question_bank.scenarios(kinds)

    def answer(question: str, case: question_bank.Scenario) -> tuple[str, str | None]:
        if isinstance(responder, GroundedResponder):
            return responder.answer(question, case.evidence), None
        checked = responder.checked_answer(question, case.evidence, image=case.image, overlay=case.overlay)
        return checked.text, checked.model_text

    reading, misread = question_bank.reading_metrics(entries, reader)
    records = question_bank.ask_bank(entries, cases, answer)
    metrics = {"reading": reading, "answers": question_bank.answer_metrics(records)}
    settings = {"bank": str(args.bank), "responder": responder.name, "scenarios": len(cases)}
    payload = {"settings": settings, "metrics": metrics, "misread": misread,
               "wrong_answers": question_bank.wrong_answers(records),
               "overlap": overlap.to_dict() if overlap is not None else {"checked": False}}
    _write(Path(args.out), "bank_metrics", payload, markdown(metrics, settings), records, "bank_answers.jsonl")
    return metrics


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The dataset evaluation (``--data``), the question bank (``--bank``), or both."""
    from zsad.errors import UsageError

    if not args.data and not args.bank:
        raise UsageError("give --data DATASET, --bank [FILE], or both")
    record, reason = _training_record(args)
    plan = plan_dataset(args, record) if args.data else []
    overlap = check_overlap(args, record, reason, plan, bank_questions(args) if args.bank else [])  # before a model
    responder = _responder(args)
    out: dict[str, Any] = {}
    if args.data:
        out["dataset"] = run_dataset(args, responder, plan, overlap)
    if args.bank:
        out["bank"] = run_bank(args, responder, overlap)
    return out["dataset"] if not args.bank else out["bank"] if not args.data else out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="dataset root (MVTec/VisA/meta.json/folder)")
    p.add_argument("--bank", nargs="?", const=str(question_bank.DEFAULT_BANK), default=None, metavar="FILE",
                   help="ask the held-out question bank (default evaluation/questions/heldout.yaml)")
    p.add_argument("--bank-limit", type=int, default=None, help="only the first N questions of the bank (smoke runs)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--categories", nargs="*", default=None)
    p.add_argument("--limit", type=int, default=None, help="at most this many test images per category")
    p.add_argument("--detector", default="clip", help="zsad method giving the evidence, or ground-truth")
    p.add_argument("--backbone", default="ViT-L-14-336:openai")
    p.add_argument("--image-size", type=int, default=518)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--lvlm", default=None, help="LVLM id/folder/tiny-random (default: grounded rules)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder for --lvlm (its training record is checked)")
    p.add_argument("--trained-on", default=None, metavar="PATH",
                   help="check against this training record instead: an adapter folder, its training_data.json or "
                        "a dialogues .jsonl")
    p.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even when images or questions were used in training (the counts are reported)")
    p.add_argument("--questions", default="heldout", metavar="heldout|training|FILE",
                   help="dataset questions: held-out paraphrases (default), the first training paraphrase, or a "
                        "question bank YAML to draw them from")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest LVLM answer, in tokens")
    p.add_argument("--hint-flip", action="store_true", help="also ask with a flipped hint")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    from zsad.errors import ZsadError

    args = build_parser().parse_args(argv)
    try:
        metrics = run(args)
    except ZsadError as exc:
        print(f"eval_dialogue: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
