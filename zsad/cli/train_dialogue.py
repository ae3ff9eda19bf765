"""``zsad train-dialogue``: tune a LoRA adapter of an LVLM on dialogues synthesised from a dataset."""

from __future__ import annotations

import argparse

from zsad.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from zsad.dialogue.lvlm.tiny.tiny_lvlm import TINY_MODELS
    from zsad.dialogue.training.train import TrainConfig

    p = sub.add_parser("train-dialogue", help="fine-tune an LVLM's LoRA adapter on dialogues made from a dataset",
                       description="Synthesise instruction dialogues from (image, mask, defect type) of a dataset "
                                   "(or read a .jsonl of them) and train a LoRA adapter on the language model.")
    p.add_argument("--data", required=True, help="dataset root (MVTec/VisA/meta.json/folder) or a dialogues .jsonl")
    p.add_argument("--categories", nargs="+", default=None,
                   help="train on every image of these categories (evaluate on the others); default: every category")
    p.add_argument("--split", default=None, choices=["train", "test", "all"],
                   help="which images dialogues are made from (default: train, or all with --categories); the "
                        "evaluation uses the test split, and refuses images or questions training used")
    p.add_argument("--out", required=True, help="adapter folder to write, e.g. adapters/NAME")
    p.add_argument("--base", default=TrainConfig.base,
                   help=f"LVLM id, local folder, or a tiny random model for smoke runs ({', '.join(TINY_MODELS)}; "
                        f"default {TrainConfig.base})")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2r)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (and each epoch)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsad.dialogue.training.overlap import RECORD_NAME
    from zsad.dialogue.training.train import TrainConfig, train

    if args.epochs < 1 or args.batch_size < 1 or args.lora_r < 1 or (args.max_steps is not None and args.max_steps < 1):
        raise UsageError("--epochs, --batch-size, --lora-r and --max-steps must be at least 1")
    config = TrainConfig(data=args.data, out=args.out, base=args.base, epochs=args.epochs, lr=args.lr,
                         categories=tuple(args.categories) if args.categories else None, split=args.split,
                         batch_size=args.batch_size, max_steps=args.max_steps, seed=args.seed, lora_r=args.lora_r,
                         checkpoint_every=args.checkpoint_every, resume=args.resume, device=args.device,
                         precision=args.precision, cache_dir=args.cache_dir, quiet=args.quiet)
    summary = train(config)
    if summary["main"]:
        processes = f" on {summary['processes']} processes" if summary["processes"] > 1 else ""
        print(f"trained {summary['steps']} steps{processes} on {summary['dialogues']} dialogues, last loss "
              f"{summary['loss']:.4f}; adapter in {summary['adapter']}")
        print(f"what it trained on (image hashes, paraphrases; eval_dialogue checks against it): "
              f"{summary['adapter']}/{RECORD_NAME}")
    return 0
