"""Dataset defect-type names -> zsad's defect vocabulary, from ``prompts/defect_type_map.yaml``.

Evaluation compares the type zsad names with the dataset's folder (or ``specie_name``) type; the names differ
(``scratch_head``, ``faulty_imprint``), so a written table maps them, and anything the table and the vocabulary do
not name is reported as unmapped rather than guessed. The file format and lookup order are described in the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zsad.errors import UsageError

log = logging.getLogger(__name__)

MAP_FILE = "defect_type_map.yaml"


def normalize(name: str) -> str:
    """``"Scratch Head"`` / ``"scratch-head"`` -> ``"scratch_head"``: the form the table's keys are in."""
    return "_".join(name.strip().lower().replace("-", " ").split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys (PyYAML would silently keep the last one)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


@dataclass(frozen=True)
class TypeMap:
    """The table (normalised dataset name -> zsad type or None) and the names that name no type."""

    types: Mapping[str, str | None]
    unnamed: frozenset[str]
    source: str = MAP_FILE

    def resolve(self, name: str, vocabulary: Mapping[str, Sequence[str]]) -> str | None:
        """The zsad type of dataset type ``name`` within ``vocabulary`` (type -> synonyms), or None (unmapped)."""
        key = normalize(name)
        if key in self.types:
            target = self.types[key]
            return target if target in vocabulary else None
        phrase = key.replace("_", " ")
        for kind, synonyms in vocabulary.items():
            if phrase == kind.lower() or any(phrase == s.strip().lower() for s in synonyms):
                return kind
        return None

    def is_unnamed(self, name: str) -> bool:
        return normalize(name) in self.unnamed


def parse_type_map(data: Any, source: str) -> TypeMap:
    """Check the file's structure: ``types`` maps names to a string or null, ``unnamed`` is a list of strings,
    and no two names are the same once normalised."""
    if not isinstance(data, dict) or set(data) - {"types", "unnamed"}:
        raise UsageError(f"{source}: expected a mapping with keys 'types' and 'unnamed'")
    types = data.get("types") or {}
    unnamed = data.get("unnamed") or []
    if not isinstance(types, dict):
        raise UsageError(f"{source}: 'types' must map dataset type names to a zsad type or null")
    if not isinstance(unnamed, list) or not all(isinstance(u, str) for u in unnamed):
        raise UsageError(f"{source}: 'unnamed' must be a list of names")
    table: dict[str, str | None] = {}
    for name, target in types.items():
        if not isinstance(name, str) or not (target is None or isinstance(target, str) and target.strip()):
            raise UsageError(f"{source}: types.{name}: the value must be a zsad defect type or null, got {target!r}")
        key = normalize(name)
        if key in table:
            raise UsageError(f"{source}: types: {name!r} repeats {key!r} (names are compared lower-case, '-' as '_')")
        table[key] = target
    return TypeMap(table, frozenset(normalize(u) for u in unnamed), source)


def load_type_map(path: str | Path | None = None, vocabulary: Mapping[str, Sequence[str]] | None = None) -> TypeMap:
    """The bundled table (or ``path``), checked; targets missing from ``vocabulary`` are logged and unmapped."""
    from zsad.prompts import prompts_dir

    path = Path(path) if path is not None else prompts_dir() / MAP_FILE
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the defect-type map ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not a valid defect-type map ({' '.join(str(exc).split())})") from None
    found = parse_type_map(data, str(path))
    if vocabulary is not None:
        stray = sorted({t for t in found.types.values() if t is not None and t not in vocabulary})
        if stray:
            log.warning("%s maps to types the prompt vocabulary lacks (%s); those dataset types count as unmapped",
                        path, ", ".join(stray))
    return found


def sha256_of_bundled() -> str:
    """Hash of the bundled table, for run signatures: an edited table changes the type-naming figures."""
    import hashlib

    from zsad.prompts import prompts_dir

    return hashlib.sha256((prompts_dir() / MAP_FILE).read_bytes()).hexdigest()
