"""What the page shows of a session at a threshold (:class:`View`), and drawing it (:class:`ViewWriter`).

A view is drawn from decided results: the runner's own decisions right after scoring, or decisions made again
from the kept raw maps when the threshold slider moves. Each view goes to a fresh folder (browsers cache by URL);
the previous one is removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsad.demo import table
from zsad.demo.kept import KeptImage
from zsad.demo.names import png_name
from zsad.methods.musc.repeats import describe_repeats
from zsad.types import AnomalyResult
from zsad.visualize import overlay


@dataclass(frozen=True)
class View:
    """What the page shows for a session at a threshold."""

    gallery: list[tuple[str, str]]  # (overlay PNG path, caption)
    rows: list[list[Any]]
    csv_path: str
    status: str


@dataclass(frozen=True)
class Shown:
    """One scored image as drawn: its gallery entry and its table row."""

    picture: str  # overlay PNG path
    caption: str
    row: list[Any]


class ViewWriter:
    """Draws one view into ``folder/view-<number>`` (older views in ``folder`` are removed): an overlay per scored
    image, then the table, its CSV and the status line (:meth:`finish`)."""

    def __init__(self, folder: Path, number: int) -> None:
        self.out = folder / f"view-{number}"
        self.out.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("view-*"):
            if old != self.out:
                shutil.rmtree(old, ignore_errors=True)
        self.shown: dict[int, Shown] = {}  # item index -> what was drawn
        self.repeats: list[tuple[str, dict]] = []  # rows of images sharing a repeated anomaly (musc/auto)

    def draw(self, index: int, name: str, kept: KeptImage, result: AnomalyResult) -> None:
        """Draw item ``index`` from its decided ``result`` (full resolution; the picture is display size)."""
        picture = overlay(kept.picture_image(), kept.heat_map(), kept.display_mask(result.pred_mask))
        path = self.out / png_name(name)
        picture.save(path)
        verdict = "ANOMALOUS" if result.pred_label else "normal"
        defect = f" · {result.defect_type}" if result.defect_type else ""
        repeat = f" · repeat {result.extras['repeat_pattern']}" if result.extras.get("repeat_pattern") else ""
        self.shown[index] = Shown(str(path), f"{name} · {result.image_score:.3f} · {verdict}{defect}{repeat}",
                                  table.result_row(name, result))
        if repeat:
            self.repeats.append(("", result.extras))

    def finish(self, items: Sequence[Any], *, method: str, seconds: float, threshold: float,
               random_weights: bool | None) -> View:
        """The view of ``items`` (each with ``name`` and ``error``), in their order: drawn ones in the gallery and
        the table, the others as error rows."""
        gallery, rows = [], []
        for index, item in enumerate(items):
            shown = self.shown.get(index)
            if shown is None:
                rows.append(table.error_row(item.name, item.error))
                continue
            gallery.append((shown.picture, shown.caption))
            rows.append(shown.row)
        csv_path = table.write_csv(self.out, rows)
        failed = len(items) - len(gallery)
        status = (f"**{len(gallery)}** image(s) scored with `{method}` in {seconds:.1f} s: "
                  f"**{table.anomalous(rows)}** anomalous at threshold {threshold:.2f}")
        if failed:
            status += f"; **{failed}** could not be read (see the table)"
        for line in describe_repeats(self.repeats):  # a systematic fault: say it where the user looks first
            status += f". **Repeated anomaly: {line}**"
        if random_weights:
            status += ". Random backbone weights: scores are meaningless."
        return View(gallery=gallery, rows=rows, csv_path=str(csv_path), status=status)
