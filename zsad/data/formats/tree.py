"""Category-tree layouts: MVTec AD and MPDD (``good``) and BTAD (``ok``/``ko``).

``<root>/<cat>/{train,test}/<defect>/<image>`` with masks in ``<root>/<cat>/ground_truth/<defect>/``;
the folder named like the normal folder is normal, every other folder is anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zsad.data.formats.common import (
    NORMAL,
    Sample,
    empty_split_error,
    find_mask,
    index_masks,
    list_images,
    missing_mask_error,
    subdirs,
    warn_loose_images,
)

GROUND_TRUTH = "ground_truth"


@dataclass(frozen=True)
class TreeLayout:
    """What differs between MVTec-like layouts: the normal folder's name and how masks are named.

    ``mask_names`` are stem patterns in order of preference; the first one (with ``.png``)
    is the path named when a mask is missing.
    """

    normal_dir: str
    mask_names: tuple[str, ...]

    def categories(self, root: Path) -> tuple[str, ...]:
        """Sub-folders of ``root`` that hold a ``test/`` or ``train/`` folder."""
        return tuple(d.name for d in subdirs(root) if (d / "test").is_dir() or (d / "train").is_dir())

    def samples(self, root: Path, category: str, split: str) -> list[Sample]:
        """Samples sorted by defect folder then file name."""
        split_dir = root / category / split
        if not split_dir.is_dir():
            raise empty_split_error(split, category, root, f"{split_dir} does not exist")
        warn_loose_images(split_dir, f"only images inside {self.normal_dir}/ or a defect folder are used")
        samples: list[Sample] = []
        for defect_dir in subdirs(split_dir):
            samples.extend(self._defect_samples(root / category / GROUND_TRUTH, defect_dir, category, split))
        if not samples:
            raise empty_split_error(split, category, root)
        return samples

    def _defect_samples(self, gt_root: Path, defect_dir: Path, category: str, split: str) -> list[Sample]:
        images = list_images(defect_dir)
        if defect_dir.name == self.normal_dir:
            return [Sample(p, 0, None, category, NORMAL, split) for p in images]
        gt_dir = gt_root / defect_dir.name
        index = index_masks(gt_dir)
        samples = []
        for image in images:
            mask = find_mask(index, image.stem, self.mask_names)
            if mask is None:
                raise missing_mask_error(image, gt_dir / f"{self.mask_names[0].format(image.stem)}.png")
            samples.append(Sample(image, 1, mask, category, defect_dir.name, split))
        return samples


#: MVTec AD and MPDD: ``test/good``, masks ``ground_truth/<defect>/<stem>_mask.png``.
MVTEC = TreeLayout(normal_dir="good", mask_names=("{}_mask", "{}"))
#: BTAD: ``test/ok`` and ``test/ko``, masks ``ground_truth/ko/<stem>.png`` (or ``.bmp``).
BTAD = TreeLayout(normal_dir="ok", mask_names=("{}", "{}_mask"))
