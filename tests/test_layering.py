"""The package's layers, enforced (see ARCHITECTURE.md).

Every ``import`` in every module under ``zsad/`` is an arrow: top-level, inside functions and methods, under
``if TYPE_CHECKING:``, relative or absolute; a string that is exactly a zsad module's dotted name counts too (that is
how the importlib registries, ``zsad.methods.METHODS`` and the tiny LVLMs, import). An arrow may point into its own
layer or any layer below it, never up. ``from zsad.x import y`` points at the module ``zsad.x.y`` when there is one,
otherwise at ``zsad.x``; the parent packages Python runs on the way are not counted as arrows.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "zsad"
ROOT = "zsad"

#: The layers, highest first. A module may import its own layer and the layers below it. ``"zsad.x.*"`` is the
#: package ``zsad.x`` and everything under it; a name without ``*`` is that one module. The most specific entry
#: wins (``"zsad.adapters.folder"`` over ``"zsad.adapters"``; an exact name over a ``*``).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("zsad.cli.*", "zsad.__main__")),
    ("demo", ("zsad.demo.*",)),
    ("integrations", ("zsad.integrations.*",)),  # other tools' models (anomalib): build with create(), score via runner
    ("export", ("zsad.export.*",)),  # build-time only: builds with create(), traces, quantises, checks fidelity
    ("evaluate", ("zsad.evaluate",)),  # benchmark protocol: create() + the runner + metrics
    ("builder", (ROOT, "zsad.detector")),  # zsad.create / Detector (the package face hands out create lazily)
    ("runner", ("zsad.runner",)),
    ("decisions", ("zsad.decisions",)),
    ("methods", ("zsad.methods.*",)),
    ("adapter checks", ("zsad.adapters",)),  # load(): the folder checked against a backbone name + a validator
    ("backbones", ("zsad.backbones.*",)),
    ("dialogue training", ("zsad.dialogue.training.*",)),
    ("dialogue lvlm", ("zsad.dialogue.lvlm.*",)),
    ("dialogue answer", ("zsad.dialogue", "zsad.dialogue.answer.*")),
    ("dialogue understand", ("zsad.dialogue.understand.*",)),
    ("dialogue shared", ("zsad.dialogue.evidence", "zsad.dialogue.tables")),
    ("ground floor", ("zsad.adapters.folder", "zsad.data.*", "zsad.metrics.*", "zsad.scoring.*", "zsad.device",
                      "zsad.distributed", "zsad.outputs", "zsad.prompts", "zsad.visualize", "zsad.weights")),
    ("base", ("zsad.errors", "zsad.fileio", "zsad.resources", "zsad.types")),
]

#: Upward arrows the code still has: (importer, imported) -> what to do. Each is a bug to fix, not a rule; remove
#: the entry with the fix (the test fails on an entry that no longer matches an arrow).
KNOWN_UPWARD_ARROWS: dict[tuple[str, str], str] = {}

LIBRARY = ("zsad.*",)
FRONT_ENDS = ("zsad.cli.*", "zsad.demo.*", "zsad.__main__")
DIALOGUE_SERVING = ("zsad.dialogue", "zsad.dialogue.understand.*", "zsad.dialogue.answer.*", "zsad.dialogue.lvlm.*",
                    "zsad.dialogue.evidence", "zsad.dialogue.tables")

#: Rules stated on their own (most also follow from LAYERS; these say it in words and hold whatever the order):
#: (rule, importers, importers exempt, forbidden zsad modules, forbidden top-level packages outside zsad).
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    ("backbones never import methods, the runner, the builder or a front end",
     ("zsad.backbones.*",), (),
     ("zsad.methods.*", "zsad.runner", "zsad.decisions", "zsad.detector", ROOT, "zsad.evaluate", "zsad.export.*",
      *FRONT_ENDS), ()),
    ("methods never import the runner, the builder, evaluate, export or a front end",
     ("zsad.methods.*",), (),
     ("zsad.runner", "zsad.detector", ROOT, "zsad.evaluate", "zsad.export.*", *FRONT_ENDS), ()),
    ("the library never imports zsad.cli or zsad.demo", LIBRARY, FRONT_ENDS, ("zsad.cli.*", "zsad.demo.*"), ()),
    ("nothing in zsad imports the repository's demo/ or evaluation/ folders", LIBRARY, (), (), ("demo", "evaluation")),
    ("dialogue serving never imports zsad.dialogue.training", DIALOGUE_SERVING, (), ("zsad.dialogue.training.*",), ()),
    ("gradio is imported only by zsad.demo.page", LIBRARY, ("zsad.demo.page",), (), ("gradio", "gradio_client")),
    ("anomalib is imported only by zsad.integrations.anomalib and the metrics backend", LIBRARY,
     ("zsad.integrations.anomalib.*", "zsad.metrics.anomalib_backend"), (), ("anomalib",)),
    ("argparse stays in zsad.cli", LIBRARY, ("zsad.cli.*",), (), ("argparse",)),
]


@dataclass(frozen=True)
class Arrow:
    file: str  # relative to the repository root
    line: int
    importer: str
    target: str  # a zsad module, or the top-level name of a package outside zsad
    internal: bool

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.importer} -> {self.target}"


def matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        package = pattern[:-2]
        return module == package or module.startswith(package + ".")
    return module == pattern


def matches_any(module: str, patterns: tuple[str, ...]) -> bool:
    return any(matches(module, p) for p in patterns)


@cache
def modules() -> dict[str, Path]:
    """Every module under zsad/ by dotted name (a package by its own name, not ``.__init__``)."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the most specific entry matching ``module`` (None: in no layer)."""
    best: tuple[int, int] | None = None  # (specificity, layer index)
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if matches(module, pattern):
                specificity = 2 * len(pattern.removesuffix(".*")) + (not pattern.endswith(".*"))
                if best is None or specificity > best[0]:
                    best = (specificity, index)
    return None if best is None else best[1]


def resolve(name: str) -> str | None:
    """The zsad module ``name`` is, or the module that holds it (``zsad.methods.METHODS`` -> ``zsad.methods``)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def targets(node: ast.AST, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """(target, internal) for one import statement."""
    if isinstance(node, ast.Import):
        found = []
        for alias in node.names:
            top = alias.name.partition(".")[0]
            found.append((resolve(alias.name), True) if top == ROOT else (top, False))
        return found
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    top = base.partition(".")[0]
    if top != ROOT:
        return [] if base == "__future__" else [(top, False)]
    known = modules()
    return [(f"{base}.{a.name}" if f"{base}.{a.name}" in known else resolve(base), True) for a in node.names]


def scan(source: str, module: str, is_package: bool) -> set[tuple[int, str, bool]]:
    """(line, target, internal) for every arrow in one module's source; ``internal``: the target is a zsad module."""
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= {(node.lineno, t, internal) for t, internal in targets(node, module, is_package) if t}
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known
              and node.value != ROOT):  # "zsad" alone in a string is a logger or metadata key, not an import
            found.add((node.lineno, node.value, True))
    return {(line, t, internal) for line, t, internal in found if t != module}


@cache
def arrows() -> tuple[Arrow, ...]:
    repo = PACKAGE_DIR.parent
    found = [Arrow(path.relative_to(repo).as_posix(), line, module, target, internal)
             for module, path in modules().items()
             for line, target, internal in scan(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")]
    return tuple(sorted(found, key=lambda a: (a.file, a.line, a.target)))


def layer_name(module: str) -> str:
    index = layer_of(module)
    return "no layer" if index is None else LAYERS[index][0]


def upward_arrows() -> list[Arrow]:
    return [a for a in arrows() if a.internal and layer_of(a.importer) is not None and layer_of(a.target) is not None
            and layer_of(a.target) < layer_of(a.importer)]


def test_every_module_has_a_layer():
    assert modules(), f"no modules found under {PACKAGE_DIR}"
    missing = [m for m in modules() if layer_of(m) is None]
    assert not missing, "modules in no layer; add them to LAYERS in tests/test_layering.py:\n  " + "\n  ".join(missing)
    patterns = [p for _, ps in LAYERS for p in ps]
    assert len(patterns) == len(set(patterns)), "an entry appears in two layers"


def test_arrows_point_down():
    bad = [a for a in upward_arrows() if (a.importer, a.target) not in KNOWN_UPWARD_ARROWS]
    assert not bad, "imports that point up a layer (see LAYERS in tests/test_layering.py, ARCHITECTURE.md):\n  " + \
        "\n  ".join(f"{a}   [{layer_name(a.importer)} -> {layer_name(a.target)}]" for a in bad)


def test_known_upward_arrows_still_exist():
    """An entry of KNOWN_UPWARD_ARROWS whose arrow is gone (or no longer upward) must be removed."""
    present = {(a.importer, a.target) for a in upward_arrows()}
    stale = [f"{i} -> {t}" for i, t in KNOWN_UPWARD_ARROWS if (i, t) not in present]
    assert not stale, "fixed: remove from KNOWN_UPWARD_ARROWS:\n  " + "\n  ".join(stale)


@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_rule(rule):
    text, importers, exempt, internal_targets, external_targets = rule
    bad = [a for a in arrows()
           if matches_any(a.importer, importers) and not matches_any(a.importer, exempt)
           and (matches_any(a.target, internal_targets) if a.internal else a.target in external_targets)]
    assert not bad, f"broken rule: {text}:\n  " + "\n  ".join(map(str, bad))


def test_the_scan_sees_every_kind_of_import():
    """Guards the walker itself, on a made-up module zsad.methods.clip: an import inside a function, under
    TYPE_CHECKING, relative ones (``.`` and ``..``), ``import a.b``, a module named by string, packages outside zsad."""
    source = """
from __future__ import annotations
from typing import TYPE_CHECKING
from . import base
if TYPE_CHECKING:
    from zsad.decisions import Thresholds
REGISTRY = {"x": "zsad.runner"}
class Thing:
    def run(self):
        from ..detector import create
        import zsad.errors
        import gradio as gr
        from demo.make_screenshot import main
"""
    assert scan(source, "zsad.methods.clip", is_package=False) == {
        (4, "zsad.methods.base", True), (6, "zsad.decisions", True), (7, "zsad.runner", True),
        (10, "zsad.detector", True), (11, "zsad.errors", True), (12, "gradio", False), (13, "demo", False),
        (3, "typing", False),
    }
