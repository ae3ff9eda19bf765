"""Prompt banks as data: state words, sentence templates and a defect vocabulary, loaded from YAML.

The bundled banks live in ``prompts/`` (shipped inside the wheel as ``zsad/_data/prompts``). A user file
given with ``--prompts`` has the same schema and may hold any of the top-level keys ``states``,
``templates`` and ``defects``; the keys it has replace the bundled ones.

``defects.wording`` (optional) says how dialogue names and recognises each type: ``noun`` ("a misplaced
component"), ``words`` that say the type is there ("scratched", "scuffs"), ``topics`` that only name what is
asked about ("color", "print") and ``absent`` phrases that say it is not there ("in place"). Types without an
entry get ``a/an <type>`` and their synonyms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zsad.errors import UsageError
from zsad.resources import data_dir

BANK_FILES = ("states.yaml", "templates.yaml", "defects.yaml")


def prompts_dir() -> Path:
    """The bundled prompt folder: inside the installed wheel, or the repository's ``prompts/`` in editable mode."""
    return data_dir("prompts", "states.yaml")


@dataclass(frozen=True)
class DefectWording:
    """How dialogue names one defect type (``defects.wording`` in the module doc)."""

    noun: str
    words: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptBank:
    """Everything the text side of a training-free method needs."""

    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]
    templates: tuple[str, ...]
    defect_templates: tuple[str, ...]
    defects: Mapping[str, tuple[str, ...]]
    defect_wording: Mapping[str, DefectWording] = field(default_factory=dict)

    def state_sentences(self, class_name: str) -> tuple[list[str], list[str]]:
        """All ``template x state`` sentences for the normal and the anomalous state of ``class_name``."""
        normal = [t.format(s.format(class_name)) for s in self.normal_states for t in self.templates]
        anomalous = [t.format(s.format(class_name)) for s in self.anomalous_states for t in self.templates]
        return normal, anomalous

    def defect_sentences(self, class_name: str) -> dict[str, list[str]]:
        """Sentences per defect type, every synonym in every defect template."""
        return {
            kind: [t.format(object=class_name, defect=syn) for syn in synonyms for t in self.defect_templates]
            for kind, synonyms in self.defects.items()
        }


def _fail(source: str, key: str, problem: str) -> None:
    raise UsageError(f"prompts file {source}: key '{key}' {problem}")


def _string_list(value: Any, source: str, key: str, placeholder: str | None = "{}") -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        _fail(source, key, "must be a non-empty list of strings")
    if placeholder is not None:
        bad = [v for v in value if placeholder not in v]
        if bad:
            _fail(source, key, f"has entries without the placeholder {placeholder}: {bad[:3]}")
    return tuple(value)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"prompts file {path}: cannot read it ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"prompts file {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"prompts file {path}: expected a mapping with keys states / templates / defects")
    unknown = set(data) - {"states", "templates", "defects"}
    if unknown:
        _fail(str(path), sorted(unknown)[0], "is not one of states, templates, defects")
    return data


def _parse_templates(section: Any, source: str) -> tuple[str, ...]:
    if isinstance(section, list):
        return _string_list(section, source, "templates")
    if not isinstance(section, dict) or not isinstance(section.get("families"), dict) or not section["families"]:
        _fail(source, "templates.families", "must be a mapping of family name -> list of templates")
    families = {name: _string_list(v, source, f"templates.families.{name}") for name, v in section["families"].items()}
    chosen = section.get("default", list(families))
    if isinstance(chosen, str):
        chosen = [chosen]
    if not isinstance(chosen, list) or not chosen:
        _fail(source, "templates.default", "must name one or more families")
    missing = [c for c in chosen if c not in families]
    if missing:
        _fail(source, "templates.default", f"names unknown families {missing}; known: {sorted(families)}")
    return tuple(t for name in chosen for t in families[name])


def _parse_defects(section: Any, source: str) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    if not isinstance(section, dict):
        _fail(source, "defects", "must be a mapping with keys templates and types")
    templates = _string_list(section.get("templates"), source, "defects.templates", placeholder="{defect}")
    types = section.get("types")
    if not isinstance(types, dict) or not types:
        _fail(source, "defects.types", "must be a mapping of defect type -> list of synonyms")
    vocab = {str(k): _string_list(v, source, f"defects.types.{k}", placeholder=None) for k, v in types.items()}
    return templates, vocab


def _parse_wording(section: Any, source: str, types: Mapping[str, Any]) -> dict[str, DefectWording]:
    """``defects.wording``: type -> {noun, words, topics, absent}; every key a type of ``defects.types``."""
    wording = section.get("wording") if isinstance(section, dict) else None
    if wording is None:
        return {}
    if not isinstance(wording, dict):
        _fail(source, "defects.wording", "must be a mapping of defect type -> {noun, words, topics, absent}")
    out = {}
    for kind, entry in wording.items():
        key = f"defects.wording.{kind}"
        if kind not in types:
            _fail(source, key, f"names no type of defects.types ({', '.join(types)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("noun"), str) or not entry["noun"].strip():
            _fail(source, key, "must be a mapping with a non-empty string 'noun'")
        unknown = set(entry) - {"noun", "words", "topics", "absent"}
        if unknown:
            _fail(source, f"{key}.{sorted(unknown)[0]}", "is not one of noun, words, topics, absent")
        lists = {name: _string_list(entry[name], source, f"{key}.{name}", placeholder=None) if name in entry else ()
                 for name in ("words", "topics", "absent")}
        out[str(kind)] = DefectWording(noun=entry["noun"].strip(), **lists)
    return out


def load_prompt_bank(user_file: str | Path | None = None) -> PromptBank:
    """The bundled bank, with the sections present in ``user_file`` replacing the bundled ones."""
    bundled = prompts_dir()
    merged: dict[str, tuple[Any, str]] = {}
    for name in BANK_FILES:
        path = bundled / name
        merged.update({k: (v, str(path)) for k, v in _read_yaml(path).items()})
    if user_file is not None:
        path = Path(user_file)
        if not path.is_file():
            raise UsageError(f"prompts file {path} does not exist")
        merged.update({k: (v, str(path)) for k, v in _read_yaml(path).items()})

    states, source = merged["states"]
    if not isinstance(states, dict):
        _fail(source, "states", "must be a mapping with keys normal and anomalous")
    normal = _string_list(states.get("normal"), source, "states.normal")
    anomalous = _string_list(states.get("anomalous"), source, "states.anomalous")
    templates = _parse_templates(*merged["templates"])
    defect_templates, vocab = _parse_defects(*merged["defects"])
    wording = _parse_wording(*merged["defects"], vocab)
    return PromptBank(normal, anomalous, templates, defect_templates, vocab, wording)
