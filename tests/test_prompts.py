import pytest

from zsad.errors import UsageError
from zsad.prompts import load_prompt_bank, prompts_dir


def test_bundled_bank_loads_and_builds_sentences():
    bank = load_prompt_bank()
    assert (prompts_dir() / "states.yaml").is_file()
    normal, anomalous = bank.state_sentences("bottle")
    assert len(normal) == len(bank.normal_states) * len(bank.templates)
    assert len(anomalous) == len(bank.anomalous_states) * len(bank.templates)
    assert all("bottle" in s for s in normal + anomalous)
    assert "a photo of a flawless bottle." in normal
    assert "a photo of a damaged bottle." in anomalous
    defects = bank.defect_sentences("bottle")
    for kind in ("scratch", "crack", "hole", "contamination", "bent", "cut", "missing", "misplaced", "color", "fold"):
        assert kind in defects and defects[kind]
    assert any("hole" in s and "bottle" in s for s in defects["hole"])


def test_user_file_replaces_only_its_sections(tmp_path):
    user = tmp_path / "p.yaml"
    user.write_text('states:\n  normal: ["good {}"]\n  anomalous: ["bad {}", "{} with a dent"]\n'
                    'templates: ["{}."]\n')
    bank = load_prompt_bank(user)
    normal, anomalous = bank.state_sentences("gear")
    assert normal == ["good gear."]
    assert anomalous == ["bad gear.", "gear with a dent."]
    assert bank.defects == load_prompt_bank().defects  # untouched section comes from the bundle


def test_template_families_select_default(tmp_path):
    user = tmp_path / "p.yaml"
    user.write_text('templates:\n  default: surface\n  families:\n    surface: ["a surface of {}."]\n'
                    '    other: ["x {}"]\n')
    assert load_prompt_bank(user).templates == ("a surface of {}.",)


@pytest.mark.parametrize("text, key", [
    ('states: ["a"]\n', "states"),
    ('states:\n  normal: []\n  anomalous: ["bad {}"]\n', "states.normal"),
    ('states:\n  normal: ["good {}"]\n  anomalous: ["bad"]\n', "states.anomalous"),
    ('templates:\n  families: {}\n', "templates.families"),
    ('templates:\n  default: nope\n  families:\n    a: ["{}"]\n', "templates.default"),
    ('defects:\n  templates: ["a {object}"]\n  types: {hole: [hole]}\n', "defects.templates"),
    ('defects:\n  templates: ["a {defect}"]\n  types: {hole: []}\n', "defects.types.hole"),
    ('colours: [red]\n', "colours"),
])
def test_malformed_user_file_names_the_key(tmp_path, text, key):
    user = tmp_path / "bad.yaml"
    user.write_text(text)
    with pytest.raises(UsageError) as info:
        load_prompt_bank(user)
    assert f"key '{key}'" in str(info.value)
    assert str(user) in str(info.value)


def test_unreadable_or_missing_prompt_files(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_prompt_bank(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("states: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_prompt_bank(bad)
