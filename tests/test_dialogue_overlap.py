"""Dialogue training and evaluation take disjoint data: the train split or named categories for training, the test
split of the others for evaluation, held-out paraphrases for questions; overlap (image bytes, question text) is
counted, reported and refused unless --allow-overlap."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from zsad.dialogue.tables import load_dialogue_tables
from zsad.dialogue.training.instructions import read_jsonl, synthesise, write_jsonl
from zsad.dialogue.training.overlap import find_overlap, matches_any, read_record, record_from_rows

EVALUATION = Path(__file__).resolve().parents[1] / "evaluation"


@pytest.fixture(scope="module")
def eval_dialogue():
    sys.path.insert(0, str(EVALUATION))
    try:
        import eval_dialogue
    finally:
        sys.path.pop(0)
    return eval_dialogue


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from zsad.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("overlap-data")
    make_dataset(root, categories=["disc", "weave"], n_train_good=2, n_test_good=2, n_test_defect=2, size=48)
    return root


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _split_of(path: str) -> str:
    return Path(path).relative_to(Path(path).parents[2]).parts[0]  # ROOT/CAT/<split>/<kind>/file.png


def test_default_split_is_train_and_named_categories_take_all_their_images(dataset):
    rows = synthesise(dataset, seed=0)
    assert rows and {_split_of(r["image"]) for r in rows} == {"train"}
    named = synthesise(dataset, categories=["disc"], seed=0)
    assert {Path(r["image"]).parents[2].name for r in named} == {"disc"}
    assert {_split_of(r["image"]) for r in named} == {"train", "test"}
    assert sum(r["anomalous"] for r in named) == 2
    tested = synthesise(dataset, split="test", seed=0)
    assert {_split_of(r["image"]) for r in tested} == {"test"}
    for row in rows:  # each row keeps the templates it asked
        asked = [m["content"][-1]["text"].splitlines()[-1] for m in row["messages"] if m["role"] == "user"]
        assert asked == [t.format(object=row["class"]) for t in row["paraphrases"]]


def test_question_matching_ignores_case_punctuation_and_the_object():
    template = "Is there any defect in this {object}?"
    assert matches_any("is there any DEFECT in this metal nut !", [template])
    assert not matches_any("Is there any defect in this?", [template])
    assert not matches_any("Is there any defect in this bottle or in the one next to it?", [template])
    assert matches_any("Where is it", ["Where is it?"]) and not matches_any("Where is it now?", ["Where is it?"])


def test_overlap_counts_images_by_content_not_name(dataset, tmp_path):
    rows = synthesise(dataset, categories=["disc"], seed=0)
    record = record_from_rows(rows, data=str(dataset), split="all", categories=["disc"])
    trained = rows[0]["image"]
    copy = tmp_path / "renamed.png"
    shutil.copyfile(trained, copy)
    other = next(p for p in sorted(Path(dataset, "weave").rglob("*.png")) if "ground_truth" not in p.parts)
    paraphrase = rows[0]["paraphrases"][-1].format(object="metal nut")  # trained on, asked about another object
    asked = [paraphrase, "What color is the sky?"]
    overlap = find_overlap(record, [copy, other, trained], asked)
    assert (overlap.images, overlap.eval_images, overlap.questions, overlap.eval_questions) == (2, 3, 1, 2)
    assert overlap.found and "2 of 3 evaluation images" in overlap.message()
    assert overlap.question_examples == (paraphrase,)
    clean = find_overlap(record, [other], ["What color is the sky?"])
    assert not clean.found and clean.to_dict()["images"] == 0


def test_heldout_pools_are_single_intent_and_never_training_paraphrases(eval_dialogue):
    import yaml

    pools = eval_dialogue.heldout_pools()
    assert {k: len(v) >= 10 for k, v in pools.items()} == {"anomaly": True, "type": True, "where": True,
                                                           "count": True}
    bank = yaml.safe_load((EVALUATION / "questions" / "heldout.yaml").read_text())["questions"]
    assert all(q in {e["q"] for e in bank} for pool in pools.values() for q in pool)

    def words(text):
        return re.findall(r"[a-z0-9]+", text.lower())

    # independent of the code under test: a template's words before and after {object} around 1-3 other words
    trained = [q for qs in load_dialogue_tables().questions.values() for q in qs]
    for pool in pools.values():
        for question in pool:
            w = words(question)
            for template in trained:
                head, _, tail = template.partition("{object}")
                h, t = words(head), words(tail)
                if "{object}" not in template:
                    assert w != h, question
                else:
                    assert not (w[:len(h)] == h and w[len(w) - len(t):] == t and 1 <= len(w) - len(h) - len(t) <= 3), \
                        (question, template)


def _train(dataset, out, *extra):
    from zsad.cli import main

    assert main(["train-dialogue", "--data", str(dataset), "--out", str(out), "--base", "tiny-random",
                 "--max-steps", "1", "--batch-size", "1", "--device", "cpu", "-q", *extra]) == 0


def _test_images(dataset, categories):
    return [p for c in categories for p in sorted(Path(dataset, c, "test").rglob("*.png"))]


def test_training_on_test_images_is_refused_then_reported(dataset, tmp_path, eval_dialogue, capsys):
    adapter = tmp_path / "ad"
    _train(dataset, adapter, "--split", "all")
    record = json.loads((adapter / "training_data.json").read_text())
    assert record["split"] == "all" and record["categories"] is None
    trained = {_sha(r["image"]) for r in read_jsonl(adapter / "dialogues.jsonl")}
    assert set(record["image_sha256"]) == trained
    expected = sum(_sha(p) in trained for p in _test_images(dataset, ["disc", "weave"]))
    assert expected > 0
    common = ["--data", str(dataset), "--detector", "ground-truth", "--adapter", str(adapter)]

    capsys.readouterr()
    assert eval_dialogue.main([*common, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlaps the training data" in err[0] and "--allow-overlap" in err[0]
    assert f"{expected} of 8 evaluation images" in err[0]
    refused = json.loads((tmp_path / "refused" / "overlap.json").read_text())
    assert (refused["images"], refused["eval_images"], refused["questions"]) == (expected, 8, 0)
    assert not (tmp_path / "refused" / "dialogue_metrics.json").exists()

    assert eval_dialogue.main([*common, "--allow-overlap", "--out", str(tmp_path / "allowed")]) == 0
    payload = json.loads((tmp_path / "allowed" / "dialogue_metrics.json").read_text())
    assert payload["overlap"]["images"] == expected and payload["metrics"]["n_images"] == 8
    assert "Overlap with the training data" in (tmp_path / "allowed" / "dialogue_metrics.md").read_text()


def test_default_split_and_heldout_questions_evaluate_cleanly_with_the_lvlm(dataset, tmp_path, eval_dialogue):
    adapter = tmp_path / "ad"
    _train(dataset, adapter)
    out = tmp_path / "eval"
    assert eval_dialogue.main(["--data", str(dataset), "--detector", "ground-truth", "--lvlm", "tiny-random",
                               "--adapter", str(adapter), "--device", "cpu", "--max-new-tokens", "3",
                               "--limit", "2", "--out", str(out)]) == 0
    payload = json.loads((out / "dialogue_metrics.json").read_text())
    overlap = payload["overlap"]
    assert overlap["checked"] and (overlap["images"], overlap["questions"]) == (0, 0)
    assert overlap["eval_images"] == 4 and overlap["eval_questions"] >= 4
    trained = {t for r in read_jsonl(adapter / "dialogues.jsonl") for t in r["paraphrases"]}
    asked = [q for line in (out / "answers.jsonl").read_text().splitlines() for q in json.loads(line)["questions"].values()]
    assert len(set(asked)) > 4 and not set(asked) & trained  # paraphrases vary over images and were not trained on


def test_categories_named_in_training_are_left_out(dataset, tmp_path, eval_dialogue, capsys):
    adapter = tmp_path / "ad"
    _train(dataset, adapter, "--categories", "disc")
    assert json.loads((adapter / "adapter.json").read_text())["training_data"]["categories"] == ["disc"]
    capsys.readouterr()
    assert eval_dialogue.main(["--data", str(dataset), "--detector", "ground-truth", "--trained-on", str(adapter),
                               "--out", str(tmp_path / "eval")]) == 0
    assert "leaving out the categories the adapter was trained on: disc" in capsys.readouterr().err
    payload = json.loads((tmp_path / "eval" / "dialogue_metrics.json").read_text())
    assert payload["settings"]["categories"] == "weave"
    assert payload["overlap"]["images"] == 0 and payload["overlap"]["eval_images"] == 4
    # naming a trained category anyway is caught by the hashes
    assert eval_dialogue.main(["--data", str(dataset), "--detector", "ground-truth", "--trained-on", str(adapter),
                               "--categories", "disc", "--out", str(tmp_path / "again")]) == 2


def test_trained_questions_are_refused(dataset, tmp_path, eval_dialogue, capsys):
    """A dialogues .jsonl that asked a held-out question: evaluating with that question is caught; and the
    training paraphrases themselves (--questions training) against a run that used them."""
    def ask(row, question):  # the first question of a row, after its hint
        first = row["messages"][0]["content"][-1]
        first["text"] = first["text"].rsplit("\n", 1)[0] + "\n" + question if "\n" in first["text"] else question

    pools = eval_dialogue.heldout_pools()
    tables = load_dialogue_tables()
    rows = synthesise(dataset, categories=["disc"], seed=0)
    leaked = pools["anomaly"][0]
    ask(rows[0], leaked)
    del rows[0]["paraphrases"]  # as a hand-made .jsonl would be
    ask(rows[1], tables.questions["anomaly"][0])
    rows[1]["paraphrases"][0] = tables.questions["anomaly"][0]
    write_jsonl(rows, tmp_path / "mine.jsonl")
    assert leaked in read_record(tmp_path / "mine.jsonl").questions
    common = ["--data", str(dataset), "--categories", "weave", "--detector", "ground-truth",
              "--trained-on", str(tmp_path / "mine.jsonl")]
    capsys.readouterr()
    assert eval_dialogue.main([*common, "--out", str(tmp_path / "a")]) == 2
    assert repr(leaked) in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "overlap.json").read_text())["questions"] == 1

    adapter = tmp_path / "ad"
    _train(tmp_path / "mine.jsonl", adapter)
    assert eval_dialogue.main(["--data", str(dataset), "--categories", "weave", "--detector", "ground-truth",
                               "--adapter", str(adapter), "--questions", "training", "--allow-overlap",
                               "--out", str(tmp_path / "b")]) == 0
    first_paraphrases = {qs[0].format(object="weave") for qs in tables.questions.values()}
    assert not any("{object}" in qs[0] for qs in tables.questions.values())  # so asked text can be compared as is
    trained = {m["content"][-1]["text"].splitlines()[-1] for r in rows for m in r["messages"] if m["role"] == "user"}
    expected = len(first_paraphrases & trained)
    assert expected >= 1
    assert json.loads((tmp_path / "b" / "overlap.json").read_text())["questions"] == expected


def test_no_training_record_is_reported_not_refused(dataset, tmp_path, eval_dialogue, capsys):
    bare = tmp_path / "old-adapter"
    bare.mkdir()
    capsys.readouterr()
    assert eval_dialogue.main(["--data", str(dataset), "--categories", "weave", "--limit", "1", "--detector",
                               "ground-truth", "--trained-on", str(bare), "--out", str(tmp_path / "o")]) == 0
    assert "not checked" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "overlap.json").read_text())["checked"] is False


def test_split_with_a_dialogues_file_is_a_usage_error(tmp_path, capsys):
    from zsad.cli import main

    write_jsonl([{"image": "x.png", "messages": []}], tmp_path / "d.jsonl")
    code = main(["train-dialogue", "--data", str(tmp_path / "d.jsonl"), "--split", "test", "--out",
                 str(tmp_path / "o"), "--base", "tiny-random", "-q"])
    assert code != 0 and "--categories and --split" in capsys.readouterr().err
