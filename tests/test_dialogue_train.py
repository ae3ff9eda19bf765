"""Instruction synthesis and LoRA training on a tiny random SmolVLM: mix, paraphrases, labels, loss, resume."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from zsad.dialogue.evidence import evidence_from_mask
from zsad.dialogue.tables import INTENTS, load_dialogue_tables
from zsad.dialogue.training.instructions import dialogue_row, fold_defect_type, synthesise, write_jsonl

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from zsad.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("dialogue-data")
    make_dataset(root, categories=["disc"], n_train_good=3, n_test_good=2, n_test_defect=4, size=48)
    return root


def _truth(anomalous: bool):
    mask = np.zeros((48, 48), dtype=bool)
    if anomalous:
        mask[2:10, 30:40] = True
    return evidence_from_mask(mask, "scratch" if anomalous else None, "disc")


def test_tables_have_ten_paraphrases_per_question():
    tables = load_dialogue_tables()
    for intent in INTENTS:
        assert len(set(tables.questions[intent])) >= 10


def test_mix_is_about_half_normal(dataset):
    rows = synthesise(dataset, split="all", seed=0)
    anomalous = sum(r["anomalous"] for r in rows)
    assert anomalous == 4 and len(rows) - anomalous == 4
    for row in rows:
        assert row["messages"][0]["content"][0] == {"type": "image"}
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * len(row["intents"])
        assert row["intents"][0] == "anomaly"
        first = row["messages"][1]["content"][0]["text"]
        assert first.startswith("Yes") if row["anomalous"] else first.startswith("No")


def test_hints_dropped_or_corrupted_about_fifteen_percent():
    tables = load_dialogue_tables()
    rng = random.Random(0)
    rows = [dialogue_row("x.png", None, _truth(i % 2 == 0), tables, rng) for i in range(1000)]
    noisy = [r for r in rows if r["hint_state"] != "true"]
    assert 0.11 < len(noisy) / len(rows) < 0.19
    assert all(r["hint"] is None for r in noisy if r["hint_state"] == "dropped")
    corrupted = [r for r in noisy if r["hint_state"] == "corrupted"]
    assert corrupted
    for row in corrupted:  # the answer still follows the truth, not the wrong hint
        answer = row["messages"][1]["content"][0]["text"]
        assert answer.startswith("Yes") == row["anomalous"]
    asked = {r["messages"][0]["content"][1]["text"].split("\n")[-1] for r in rows}
    assert len(asked) >= 10


def test_defect_type_folding():
    vocab = {"scratch": ["scratch", "scuff"], "broken": ["broken part"], "hole": ["hole"]}
    assert fold_defect_type("broken_large", vocab) == "broken"
    assert fold_defect_type("scuff", vocab) == "scratch"
    assert fold_defect_type("good", vocab) is None
    assert fold_defect_type("weird_wick", vocab) == "weird wick"


def test_labels_only_on_assistant_tokens():
    from PIL import Image

    from zsad.dialogue.lvlm.tiny.tiny_lvlm import tiny_processor
    from zsad.dialogue.training.train import IGNORE, encode_dialogue

    processor = tiny_processor()
    row = dialogue_row("x.png", None, _truth(True), load_dialogue_tables(), random.Random(1), follow_ups=2)
    batch = encode_dialogue(processor, row["messages"], [Image.new("RGB", (48, 48))])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    kept = labels != IGNORE
    assert bool((labels[kept] == ids[kept]).all())
    tokenizer = processor.tokenizer
    answers = [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"]
    decoded = tokenizer.decode(ids[kept], skip_special_tokens=True)
    for answer in answers:
        assert tokenizer.decode(tokenizer(answer)["input_ids"]) in decoded
    # Nothing of the user turns is supervised: the hint's and question's tokens all carry -100.
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert not bool((ids[kept] == image_id).any())
    reference = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
    assert int(kept.sum()) == sum(reference["assistant_masks"])


def _losses(folder):
    with open(folder / "train_log.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_few_lora_steps_lower_the_loss(tmp_path, dataset):
    from zsad.dialogue.training.train import TrainConfig, train

    rows = synthesise(dataset, split="all", seed=0)[:1]
    write_jsonl(rows, tmp_path / "one.jsonl")
    summary = train(TrainConfig(data=str(tmp_path / "one.jsonl"), out=str(tmp_path / "ad"), base="tiny-random",
                                epochs=8, batch_size=1, lr=1e-2, quiet=True, device="cpu"))
    losses = [loss for _, loss in _losses(tmp_path / "ad")]
    assert summary["steps"] == 8 and len(losses) == 8
    assert losses[-1] < losses[0]
    config = json.loads((tmp_path / "ad" / "adapter.json").read_text())
    assert config["kind"] == "lvlm-lora" and config["base_model"] == "tiny-random" and config["steps"] == 8


def test_checkpoint_and_resume_via_cli(tmp_path, dataset, capsys):
    from zsad.cli import main

    out = tmp_path / "ad"
    common = ["train-dialogue", "--data", str(dataset), "--split", "all", "--out", str(out), "--base", "tiny-random",
              "--batch-size", "2", "--device", "cpu", "-q"]  # no --checkpoint-every: the end-of-run checkpoint must suffice
    assert main([*common, "--max-steps", "2", "--epochs", "2"]) == 0
    assert (out / "checkpoint" / "trainer_state.pt").is_file() and (out / "dialogues.jsonl").is_file()
    assert main([*common, "--max-steps", "5", "--epochs", "2", "--resume"]) == 0
    assert [s for s, _ in _losses(out)] == [1, 2, 3, 4, 5]
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "random weights" in captured.err
    assert json.loads((out / "adapter.json").read_text())["steps"] == 5


def test_bad_data_is_a_clear_error(tmp_path, capsys):
    from zsad.cli import main

    code = main(["train-dialogue", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--base", "tiny-random", "-q"])
    assert code != 0
    assert "not a dataset folder or a .jsonl" in capsys.readouterr().err
