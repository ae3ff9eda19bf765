"""``zsad train-dialogue``: LoRA fine-tuning of an LVLM on synthesised instruction dialogues.

Loss only on assistant tokens: every other label is -100. The assistant spans are found by rendering the chat
template up to each assistant turn (with the generation prompt) and up to its end, so it works for official
templates that lack ``{% generation %}`` tags (lvlm.md §4.2). accelerate places the model and runs mixed
precision; a checkpoint (LoRA folder + optimizer/step state, one folder swapped in whole by
:func:`zsad.fileio.atomic_dir`) is written every N steps and at each epoch's end, and ``--resume`` continues from it.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from zsad.errors import DatasetError, UsageError, random_weights_message

log = logging.getLogger(__name__)

IGNORE = -100
CHECKPOINT = "checkpoint"
STATE_NAME = "trainer_state.pt"
LOG_NAME = "train_log.csv"


@dataclass(frozen=True)
class TrainConfig:
    """What one training run does."""

    data: str
    out: str
    base: str = "HuggingFaceTB/SmolVLM-256M-Instruct"
    categories: tuple[str, ...] | None = None
    split: str | None = None  # None: instructions.default_split (train split, or all images of named categories)
    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 4
    max_steps: int | None = None
    seed: int = 0
    lora_r: int = 8
    checkpoint_every: int = 50
    resume: bool = False
    device: str = "auto"
    precision: str = "auto"
    cache_dir: str | None = None
    quiet: bool = False


def _count_images(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if not isinstance(m["content"], str)
               for c in m["content"] if c.get("type") == "image")


def _ids(processor: Any, text: str, images: list[Image.Image]) -> Any:
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if images:
        kwargs["images"] = [images]
    return processor(**kwargs)


def encode_dialogue(processor: Any, messages: list[dict[str, Any]], images: list[Image.Image]) -> dict[str, Any]:
    """Model inputs for one dialogue with ``labels`` equal to the ids on assistant turns and -100 elsewhere."""
    render = processor.apply_chat_template
    batch = _ids(processor, render(messages, add_generation_prompt=False), images)
    ids = batch["input_ids"][0]
    labels = ids.new_full(ids.shape, IGNORE)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        shown = images[:_count_images(messages[:i])]
        start = _ids(processor, render(messages[:i], add_generation_prompt=True), shown)["input_ids"].shape[1]
        end = _ids(processor, render(messages[:i + 1], add_generation_prompt=False), shown)["input_ids"].shape[1]
        if end <= start or not bool((batch["input_ids"][0, :start] == ids[:start]).all()):
            raise UsageError("the chat template does not render a conversation as a prefix of its continuation; "
                             "this model's template is not supported for training")
        labels[start:end] = ids[start:end]
    out = dict(batch)
    out["labels"] = labels.unsqueeze(0)
    return out


def _load_rows(config: TrainConfig, out: Path, write: bool = True) -> tuple[list[dict[str, Any]], Any]:
    """The dialogues and (``write``: the main process) the record of what they use
    (:mod:`zsad.dialogue.training.overlap`), written into ``out``."""
    from zsad.dialogue.training.instructions import default_split, read_jsonl, synthesise, write_jsonl
    from zsad.dialogue.training.overlap import record_from_rows, write_record

    data = Path(config.data)
    split = None
    if data.is_file() and data.suffix == ".jsonl":
        if config.categories or config.split:
            raise UsageError("--categories and --split choose images of a dataset folder; --data is a .jsonl of "
                             "dialogues already")
        rows = read_jsonl(data)
    elif data.is_dir():
        split = config.split or default_split(config.categories)
        rows = synthesise(data, categories=config.categories, split=split, seed=config.seed)
        if write:
            write_jsonl(rows, out / "dialogues.jsonl")
    else:
        raise DatasetError(f"--data {data}: not a dataset folder or a .jsonl file of dialogues")
    if not rows:
        raise DatasetError(f"--data {data}: no dialogues in the {split or 'given'} split (a dataset needs anomalous "
                           "images with masks or normal images)")
    if split is not None and not any(r.get("anomalous") for r in rows):
        log.warning("the %s split of %s has no anomalous images with masks: all %d dialogues are about normal "
                    "images (name --categories to train on every image of them and evaluate on the others)",
                    split, data, len(rows))
    record = None
    if write:
        record = record_from_rows(rows, data=str(data), split=split, categories=config.categories)
        write_record(record, out)
    return rows, record


def _load_base(config: TrainConfig) -> tuple[Any, Any, bool]:
    from zsad.dialogue.lvlm.tiny.tiny_lvlm import is_tiny, load_tiny

    if is_tiny(config.base):
        model, processor = load_tiny(config.base, seed=config.seed)
        return model, processor, True
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from zsad.dialogue.lvlm import cpu_friendly, resolve_lvlm_dir

    folder = resolve_lvlm_dir(config.base, cache_dir=config.cache_dir)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    cpu_friendly(model, processor)
    return model, processor, False


def _save_checkpoint(out: Path, model: Any, optimizer: Any, settings: Any, base: str, state: dict[str, Any]) -> None:
    import torch

    from zsad.dialogue.lvlm.lora import save_lora
    from zsad.fileio import atomic_dir

    with atomic_dir(out / CHECKPOINT, keep_others=False) as folder:  # LoRA weights and their state, together
        save_lora(model, folder, base_model=base, settings=settings, extra={"second_view": False})
        torch.save({**state, "optimizer": optimizer.state_dict()}, folder / STATE_NAME)


def train(config: TrainConfig) -> dict[str, Any]:
    """Run training; returns a summary (steps, last loss, adapter folder)."""
    import torch
    from accelerate import Accelerator
    from peft import set_peft_model_state_dict
    from tqdm.auto import tqdm

    from zsad.adapters.folder import load_adapter
    from zsad.device import resolve_device
    from zsad.dialogue.lvlm.lora import LoraSettings, apply_lora, save_lora
    from zsad.fileio import settle_dir

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    mixed = {"auto": "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no",
             "fp32": "no", "fp16": "fp16", "bf16": "bf16"}.get(config.precision)
    if mixed is None:
        raise UsageError(f"unknown precision '{config.precision}' (use auto, fp32, fp16 or bf16)")
    if device.type == "cpu":
        mixed = "no"
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed)
    main = accelerator.is_main_process
    torch.manual_seed(config.seed)
    rows, record = _load_rows(config, out, write=main)
    model, processor, random_weights = _load_base(config)
    if random_weights and main:
        print(f"zsad: WARNING: {random_weights_message(config.base, 'the adapter is only a smoke test', model='LVLM')}",
              file=sys.stderr)
    settings = LoraSettings(r=config.lora_r, alpha=2 * config.lora_r)
    model = apply_lora(model, settings)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)

    step, epoch, start_index = 0, 0, 0
    checkpoint = settle_dir(out / CHECKPOINT)  # put back a checkpoint a killed run left aside mid-swap
    if config.resume and (checkpoint / STATE_NAME).is_file():
        set_peft_model_state_dict(model, load_adapter(checkpoint).tensors)
        state = torch.load(checkpoint / STATE_NAME, weights_only=True)  # tensors and numbers only
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, start_index = state["step"], state["epoch"], state["index"]
    elif config.resume:
        log.warning("no checkpoint in %s; starting from scratch", checkpoint)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    per_epoch = (len(rows) + config.batch_size - 1) // config.batch_size
    total = per_epoch * config.epochs if config.max_steps is None else min(config.max_steps, per_epoch * config.epochs)
    log_path = out / LOG_NAME
    new_log = not (config.resume and log_path.is_file())
    if not new_log:
        _truncate_log(log_path, step)
    # only the main process writes the log, checkpoints and the adapter (the others' files would race with it)
    log_file = open(log_path if main else os.devnull, "w" if new_log else "a", newline="", encoding="utf-8")  # noqa: SIM115
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(["step", "epoch", "loss", "lr", "seconds"])
    started = time.perf_counter()
    last_loss = float("nan")
    next_index = start_index
    bar = tqdm(total=total, initial=min(step, total), disable=config.quiet or not main, desc="train-dialogue",
               unit="step")

    def checkpoint_now() -> None:
        if main:
            _save_checkpoint(out, accelerator.unwrap_model(model), optimizer, settings, config.base,
                             {"step": step, "epoch": epoch, "index": next_index})
        accelerator.wait_for_everyone()

    try:
        while step < total and epoch < config.epochs:
            order = list(range(len(rows)))
            random.Random(config.seed + epoch).shuffle(order)
            while next_index < len(order) and step < total:
                batch = [rows[i] for i in order[next_index:next_index + config.batch_size]]
                optimizer.zero_grad()
                loss_sum = 0.0
                # with several processes each takes every n-th dialogue of the batch; gradients are summed over
                # the processes once per step (the same step as one process taking the whole batch)
                for row in batch[accelerator.process_index::accelerator.num_processes]:
                    images = [_open_image(row["image"])] if _count_images(row["messages"]) else []
                    inputs = encode_dialogue(processor, row["messages"], images)
                    inputs = {k: v.to(accelerator.device) for k, v in inputs.items()}
                    with accelerator.no_sync(model), accelerator.autocast():
                        loss = model(**inputs).loss / len(batch)
                        accelerator.backward(loss)
                    loss_sum += float(loss.detach())
                loss_sum = _sum_over_processes(model, loss_sum, accelerator)
                optimizer.step()
                step += 1
                next_index += config.batch_size
                last_loss = loss_sum
                writer.writerow([step, epoch, f"{loss_sum:.6f}", config.lr, f"{time.perf_counter() - started:.2f}"])
                log_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.4f}")
                if next_index >= len(order):
                    epoch, next_index = epoch + 1, 0
                    checkpoint_now()
                elif config.checkpoint_every and step % config.checkpoint_every == 0:
                    checkpoint_now()
            if next_index >= len(order):
                epoch, next_index = epoch + 1, 0
        checkpoint_now()  # the state at the end, so --resume with more steps or epochs continues from here
    finally:
        bar.close()
        log_file.close()
    if main:
        save_lora(accelerator.unwrap_model(model), out, base_model=config.base, settings=settings,
                  extra={"second_view": False, "steps": step, "final_loss": last_loss, "data": str(config.data),
                         "random_base": random_weights, "processes": accelerator.num_processes,
                         "training_data": record.summary()})
    accelerator.wait_for_everyone()
    return {"steps": step, "loss": last_loss, "adapter": str(out), "dialogues": len(rows), "main": main,
            "processes": accelerator.num_processes}


def _sum_over_processes(model: Any, loss: float, accelerator: Any) -> float:
    """Sum the trainable parameters' gradients and the step's loss over the processes (a no-op in one)."""
    if accelerator.num_processes == 1:
        return loss
    import torch
    import torch.distributed as dist

    for param in model.parameters():
        if param.requires_grad:
            if param.grad is None:  # a process whose share of the batch was empty
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad)
    total = torch.tensor([loss], device=accelerator.device)
    dist.all_reduce(total)
    return float(total)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after the checkpoint's step (a run that stopped between checkpoints logged them)."""
    from zsad.fileio import atomic_write_text

    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    first = [line.split(",", 1)[0] for line in lines]
    kept = lines[:1] + [line for line, f in zip(lines[1:], first[1:]) if f.isdigit() and int(f) <= step]
    atomic_write_text(path, "".join(kept))


def _open_image(path: str) -> Image.Image:
    from zsad.data.images import load_image

    return load_image(path)
