"""``zsad ask IMAGE "question"``: score one image and answer a question about it on stdout."""

from __future__ import annotations

import argparse
import json
import sys

from zsad.cli.options import add_method_option, add_model_options, warn_random_weights
from zsad.errors import UsageError, random_weights_message


def detector_adapter_kinds() -> set[str]:
    """Adapter kinds some method takes (read from the method classes): ``--adapter`` routes them to the detector."""
    from zsad.methods import list_methods, method_class

    return {method_class(n).adapter_kind for n in list_methods()} - {None}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("ask", help='answer a question about one image: "is there a defect? where? what kind?"')
    p.add_argument("image", help="the image file")
    p.add_argument("question", nargs="+", help="the question (quote it, or give it as several words)")
    add_method_option(p, "scoring method for a single image", min_batch=1)
    add_model_options(p, adapter=False)
    p.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="adapter folder, repeatable; its kind routes it: learned prompts go to the detector "
                        "(use with --method anomalyclip), a LoRA dialogue adapter to the LVLM")
    p.add_argument("--lvlm", default=None, metavar="MODEL",
                   help="answer with a vision-language model (Hugging Face id or local folder, e.g. "
                        "HuggingFaceTB/SmolVLM-256M-Instruct); without it, grounded rule-based answers")
    p.add_argument("--batch", nargs="+", default=None, metavar="OTHERS",
                   help="other parts scored together with IMAGE (files, folders or globs): batch methods (auto with "
                        ">= 5 images) then compare them, and questions such as 'does this defect appear on other "
                        "parts?' are answered from the batch")
    p.add_argument("--json", action="store_true", help="print the evidence and the answer as JSON")
    p.set_defaults(func=run)
    return p


def _route_adapters(paths: list[str]) -> tuple[str | None, str | None]:
    """(detector adapter, LVLM adapter) from the ``--adapter`` folders, by the kind in their adapter.json."""
    from zsad.adapters import read_adapter_config
    from zsad.dialogue.lvlm.lora import KIND as LVLM_KIND

    detector = lvlm = None
    for path in paths:
        kind = read_adapter_config(path)["kind"]
        if kind in detector_adapter_kinds():
            if detector:
                raise UsageError(f"two detector adapters given ({detector}, {path}); pass one")
            detector = path
        elif kind == LVLM_KIND:
            if lvlm:
                raise UsageError(f"two LVLM adapters given ({lvlm}, {path}); pass one")
            lvlm = path
        else:
            raise UsageError(f"adapter {path} has kind '{kind}', which zsad ask cannot use")
    return detector, lvlm


def _vocabulary(args: argparse.Namespace):
    """The defect vocabulary of ``--prompts`` (so questions name its types), or None for the bundled one."""
    if not args.prompts:
        return None
    from zsad.dialogue.understand.vocabulary import DefectVocabulary
    from zsad.prompts import load_prompt_bank

    return DefectVocabulary(load_prompt_bank(args.prompts))


def _responder(args: argparse.Namespace, lvlm_adapter: str | None, vocabulary):
    """The LVLM responder when asked for and loadable; otherwise the grounded one, with a warning saying why."""
    from zsad.dialogue import GroundedResponder

    if not args.lvlm:
        if lvlm_adapter:
            raise UsageError(f"--adapter {lvlm_adapter} is a dialogue adapter: pass --lvlm MODEL with it")
        return GroundedResponder(vocabulary)
    from zsad.errors import ZsadError

    try:
        from zsad.dialogue.lvlm import LvlmResponder

        responder = LvlmResponder.load(args.lvlm, adapter=lvlm_adapter, device=args.device,
                                       precision=args.precision, cache_dir=args.cache_dir, vocabulary=vocabulary)
        if responder.random_weights:
            print(f"zsad: WARNING: {random_weights_message(args.lvlm, 'its answer is noise', model='LVLM')}",
                  file=sys.stderr)
        return responder
    except ImportError as exc:
        reason = f"the dialogue extra is not installed ({exc}); pip install 'zsad[dialogue]'"
    except ZsadError as exc:
        reason = str(exc)
    print(f"zsad: WARNING: cannot use the LVLM '{args.lvlm}': {reason}. Answering from the detector's evidence.",
          file=sys.stderr)
    return GroundedResponder(vocabulary)


def run(args: argparse.Namespace) -> int:
    import zsad
    from zsad.data.images import load_image
    from zsad.dialogue import Conversation
    from zsad.runner import Source, identity, sources_from_inputs

    question = " ".join(args.question).strip()
    if not question:
        raise UsageError("the question is empty")
    detector_adapter, lvlm_adapter = _route_adapters(args.adapter)
    options = {}
    if args.prompts:
        options["prompts"] = args.prompts
    if detector_adapter:
        if args.method != "anomalyclip":
            raise UsageError(f"--adapter {detector_adapter} holds learned prompts: use it with --method anomalyclip")
        options["adapter"] = detector_adapter
    image = load_image(args.image)
    detector = zsad.create(args.method, backbone=args.backbone, device=args.device, precision=args.precision,
                           image_size=args.image_size, threshold=args.threshold, class_name=args.class_name,
                           cache_dir=args.cache_dir, activation=args.activation, warn_random=False, **options)
    warn_random_weights(detector.backbone, args.backbone, "the answer is meaningless")
    asked = Source(key=identity(args.image), path=args.image, image=image)
    others = [s for s in sources_from_inputs(args.batch) if s.key != asked.key] if args.batch else []
    if args.batch and not others:
        raise UsageError(f"--batch {' '.join(args.batch)}: no other images found")
    result = detector.score([asked, *others])[0]
    responder = _responder(args, lvlm_adapter, _vocabulary(args))
    conversation = Conversation.from_result(result, image, class_name=args.class_name or "object",
                                            responder=responder)
    answer = conversation.ask(question)
    for note in conversation.notes:
        print(f"zsad: WARNING: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"image": args.image, "question": question, "answer": answer,
                          "responder": getattr(conversation.responder, "name", "grounded"),
                          "evidence": conversation.evidence.to_dict()}, indent=2))
    else:
        print(answer)
    return 0
