"""Question understanding: intents, what a yes means, the asked defect type and place, typos, refusals."""

import pytest
import yaml

from zsad.dialogue import Intent, Polarity, QuestionReader
from zsad.dialogue.tables import load_dialogue_tables
from zsad.dialogue.understand.tokens import Speller, tokenize
from zsad.dialogue.understand.vocabulary import DefectVocabulary
from zsad.errors import UsageError
from zsad.prompts import load_prompt_bank

P, L, T, W = Intent.PRESENCE, Intent.LOCATION, Intent.TYPE, Intent.WHY
DEFECT, GOOD, CHOICE = Polarity.DEFECT, Polarity.GOOD, Polarity.CHOICE


@pytest.fixture(scope="module")
def reader():
    return QuestionReader()


@pytest.mark.parametrize("question, polarity", [
    # the questions: a yes means "good"
    ("Is this image normal?", GOOD), ("Does it look good?", GOOD), ("Is the product flawless?", GOOD),
    ("Is it free of defects?", GOOD), ("Is the part ok to ship?", GOOD),
    # negations and indirect questions
    ("no defects?", GOOD), ("not damaged?", GOOD), ("Is there nothing wrong with it?", GOOD),
    ("It doesn't have any defects, does it?", GOOD), ("Is it defect-free?", GOOD), ("would you ship this?", GOOD),
    ("Can I accept it?", GOOD), ("Does it pass inspection?", GOOD),
    ("Is it not ok?", DEFECT), ("Is it not free of defects?", DEFECT),
    # a negative question means what its positive does
    ("Isn't it damaged?", DEFECT), ("Doesn't this look normal?", GOOD),
    # yes means "defective"
    ("Is there a defect?", DEFECT), ("is it brokn", DEFECT), ("Should I reject it?", DEFECT),
    ("Is anything wrong?", DEFECT), ("defective or not?", DEFECT),
    # either-or
    ("Is it normal or defective?", CHOICE), ("good or bad?", CHOICE), ("Should I accept or reject this?", CHOICE),
])
def test_polarity_of_yes_no_questions(reader, question, polarity):
    q = reader.read(question)
    assert q.intents == (P,) and q.polarity is polarity


@pytest.mark.parametrize("question, types, polarity", [
    ("Is there a crack?", ("crack",), DEFECT), ("Any scratches?", ("scratch",), DEFECT),
    ("is it scratched", ("scratch",), DEFECT), ("Are there holes?", ("hole",), DEFECT),
    ("Is it stained?", ("contamination",), DEFECT), ("Is the surface CRACKED?", ("crack",), DEFECT),
    ("any crakcs?", ("crack",), DEFECT), ("Is anything missing?", ("missing",), DEFECT),
    ("No cracks?", ("crack",), GOOD), ("Is it scratch-free?", ("scratch",), GOOD),
    ("Is the color correct?", ("color",), GOOD),  # "color" only names the topic
    ("Are all the components in place?", ("misplaced",), GOOD),  # an "absent" phrase of the type
    ("Any scratches or cracks?", ("scratch", "crack"), DEFECT),
])
def test_type_questions_name_the_canonical_type(reader, question, types, polarity):
    q = reader.read(question)
    assert q.intents == (P,) and q.types == types and q.polarity is polarity


def test_which_of_two_types_is_a_type_question(reader):
    q = reader.read("Is it a scratch or a crack?")
    assert q.intents == (T,) and q.types == ("scratch", "crack") and q.polarity is None
    assert reader.read("What kind of defect is this?").intents == (T,)
    assert reader.read("Is there some kind of blemish?").intents == (P,)  # "some kind of" is no type question


@pytest.mark.parametrize("question, area", [
    ("Is there a defect in the top left?", "top left"), ("Anything wrong in the upper right corner?", "top right"),
    ("Any damage near the edge?", "edge"), ("Is there a flaw in the center?", "center"),
    ("Is the middle ok?", "center"), ("any defect bottom rigth?", "bottom right"),
    ("Is the bottom edge undamaged?", "bottom"), ("Are the corners fine?", "corner"),
    ("Is there damage on the left side?", "left"),
])
def test_places(reader, question, area):
    q = reader.read(question)
    assert q.intents == (P,) and q.area is not None and q.area.name == area


def test_words_that_are_not_places(reader):
    assert reader.read("Is it all right?").area is None and reader.read("Is it all right?").polarity is GOOD
    assert reader.read("no damage, right?").area is None
    where = reader.read("In which corner is the defect?")
    assert where.intents == (L,) and where.area is None


@pytest.mark.parametrize("question, intents", [
    ("Why?", (W,)), ("How do you know?", (W,)), ("Explain why.", (W,)), ("Why is it flagged?", (W,)),
    ("Is it ok? Why?", (P, W)), ("How many defects are there?", (Intent.COUNT,)),
    ("Is the defect small or large?", (Intent.SIZE,)), ("Is the damage big?", (Intent.SIZE,)),
    ("Is there more than one defect?", (Intent.COUNT,)), ("Is there a defect, and where is it?", (P, L)),
    ("Where exactly is it?", (L,)),
])
def test_intents_in_order(reader, question, intents):
    assert reader.read(question).intents == intents


@pytest.mark.parametrize("question", [
    "What colour is the sky?", "What does the company sell?", "How heavy is it?", "Good morning!", "hello",
    "Who is the operator on shift?", "How long does the inspection take?",
])
def test_out_of_scope_questions_are_not_understood(reader, question):
    assert reader.read(question).intents == ()


def test_back_references(reader):
    assert reader.read("How big is it?").refers_back
    assert reader.read("Is there a defect there?").refers_back
    assert not reader.read("Is there a defect?").refers_back  # existential "there"


def test_typos_are_mended_but_real_words_are_not():
    speller = Speller({"where", "defect", "large", "normal", "scratch", "pits", "complete", "print", "big"})
    assert speller(tokenize("wher defcet lareg nromal scracth bg")) == ["where", "defect", "large", "normal",
                                                                          "scratch", "big"]
    assert speller(["pins", "completely", "paint", "there"]) == ["pins", "completely", "paint", "there"]
    assert tokenize("Isn't it? What's that") == ["is", "n't", "it", "what", "is", "that"]


def test_training_paraphrases_are_read_as_their_intent(reader):
    """Every question train-dialogue asks means what its answers assume (a yes means "defective")."""
    tables = load_dialogue_tables()
    expected = {"anomaly": Intent.PRESENCE, "type": Intent.TYPE, "where": Intent.LOCATION, "count": Intent.COUNT}
    for intent, questions in tables.questions.items():
        for text in questions:
            q = reader.read(text.format(object="metal nut"))
            assert q.intents == (expected[intent],), text
            if intent == "anomaly":
                assert q.polarity is DEFECT and not q.types and q.area is None, text


def test_user_vocabulary_is_understood_and_named(tmp_path):
    user = tmp_path / "p.yaml"
    user.write_text("defects:\n  templates: ['a {object} with a {defect}.']\n  types:\n"
                    "    burr: [burr, sharp edge]\n    oxide: [oxidation]\n"
                    "  wording:\n    oxide: {noun: 'an oxide layer', words: [oxidised, rusty]}\n")
    vocabulary = DefectVocabulary(load_prompt_bank(user))
    assert vocabulary.noun("burr") == "a burr" and vocabulary.noun("oxide") == "an oxide layer"
    assert vocabulary.bare("oxide") == "oxide layer"
    reader = QuestionReader(vocabulary)
    assert reader.read("Any burrs?").types == ("burr",)
    assert reader.read("is it oxidised").types == ("oxide",)
    assert reader.read("Is there a scratch?").types == ()  # not in this vocabulary


@pytest.mark.parametrize("wording, key", [
    ("    nope: {noun: 'x'}\n", "defects.wording.nope"),
    ("    burr: {words: [x]}\n", "defects.wording.burr"),
    ("    burr: {noun: 'a burr', colour: [x]}\n", "defects.wording.burr.colour"),
    ("    burr: {noun: 'a burr', words: []}\n", "defects.wording.burr.words"),
])
def test_malformed_wording_names_the_key(tmp_path, wording, key):
    user = tmp_path / "p.yaml"
    user.write_text("defects:\n  templates: ['a {defect}']\n  types:\n    burr: [burr]\n  wording:\n" + wording)
    with pytest.raises(UsageError, match=f"key '{key}'"):
        load_prompt_bank(user)


def test_heldout_bank_is_large_varied_and_apart_from_the_training_paraphrases():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rows = yaml.safe_load((root / "evaluation" / "questions" / "heldout.yaml").read_text())["questions"]
    assert len(rows) >= 300
    trained = {q.format(object=o).lower() for qs in load_dialogue_tables().questions.values() for q in qs
               for o in ("object", "part")}
    assert not {r["q"].lower() for r in rows} & trained
    kinds = {
        "good polarity": [r for r in rows if r.get("polarity") == "good"],
        "negations": [r for r in rows if any(w in r["q"].lower() for w in ("no ", "not ", "n't", "free", "without"))],
        "indirect": [r for r in rows if any(w in r["q"].lower() for w in ("ship", "accept", "reject", "pass"))],
        "type": [r for r in rows if r.get("type")], "region": [r for r in rows if r.get("region")],
        "out of scope": [r for r in rows if r["intent"] == "none"],
        "why": [r for r in rows if r["intent"] == "why"],
    }
    assert all(len(found) >= 10 for found in kinds.values()), {k: len(v) for k, v in kinds.items()}
