"""Dataset loaders: every layout, auto-detection, mask handling and the user-facing errors."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from zsad.data.datasets import Dataset, Sample, check_mask_size, detect_format, load_mask, open_dataset
from zsad.errors import DatasetError, UsageError

SIZE = (6, 4)  # (width, height)


def png(path: Path, size: tuple[int, int] = SIZE, value: int = 0, mode: str = "L") -> Path:
    """A tiny image; ``value`` fills it (a mask's top-left pixel is always set when value > 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, 0)
    if value:
        image.putpixel((0, 0), value if mode == "L" else (value, 0, 0))
    image.save(path)
    return path


def names(samples: list[Sample]) -> list[str]:
    return [f"{s.defect_type}/{s.image_path.name}" for s in samples]


def escaped(path: Path) -> str:
    return re.escape(str(path))


# --------------------------------------------------------------------------- layouts


def make_mvtec(root: Path, categories: tuple[str, ...] = ("screw", "bottle")) -> Path:
    for cat in categories:
        png(root / cat / "train/good/000.png")
        png(root / cat / "train/good/001.png")
        png(root / cat / "test/good/000.png")
        for defect in ("crack", "broken"):
            for stem in ("001", "000"):
                png(root / cat / "test" / defect / f"{stem}.png")
                png(root / cat / "ground_truth" / defect / f"{stem}_mask.png", value=255)
    return root


def make_btad(root: Path) -> Path:
    # 01: .bmp images with .png masks; 02: .png images with .bmp masks.
    png(root / "01/train/ok/0000.bmp")
    png(root / "01/test/ok/0000.bmp")
    png(root / "01/test/ko/0001.bmp")
    png(root / "01/ground_truth/ko/0001.png", value=255)
    png(root / "02/train/ok/0000.png")
    png(root / "02/test/ok/0000.png")
    png(root / "02/test/ko/0001.png")
    png(root / "02/ground_truth/ko/0001.bmp", value=255)
    return root


VISA_ROWS = [
    ("pcb1", "train", "normal", "pcb1/Data/Images/Normal/0000.JPG", ""),
    ("pcb1", "test", "normal", "pcb1/Data/Images/Normal/0001.JPG", ""),
    ("pcb1", "test", "anomaly", "pcb1/Data/Images/Anomaly/0000.JPG", "pcb1/Data/Masks/Anomaly/0000.png"),
    ("candle", "test", "anomaly", "candle/Data/Images/Anomaly/0005.JPG", "candle/Data/Masks/Anomaly/0005.png"),
    ("candle", "test", "normal", "candle/Data/Images/Normal/0002.JPG", ""),
]


def make_visa(root: Path, rows: list[tuple[str, ...]] = VISA_ROWS, header: tuple[str, ...] | None = None) -> Path:
    for _, _, _, image, mask in rows:
        png(root / image)
        if mask:
            png(root / mask, value=255)
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv/1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header or ("object", "split", "label", "image", "mask"))
        writer.writerows(rows)
    return root


def meta_entry(root: Path, cls: str, img: str, mask: str = "", specie: str = "good", anomaly: int = 0) -> dict:
    png(root / img)
    if mask:
        png(root / mask, value=255)
    return {"img_path": img, "mask_path": mask, "cls_name": cls, "specie_name": specie, "anomaly": anomaly}


def make_metajson(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "train": {"wood": [meta_entry(root, "wood", "wood/train/good/000.png")]},
        "test": {
            "wood": [
                meta_entry(root, "wood", "wood/test/hole/003.png", "wood/ground_truth/hole/003_mask.png", "hole", 1),
                meta_entry(root, "wood", "wood/test/good/001.png"),
            ],
            "carpet": [meta_entry(root, "carpet", "carpet/test/good/000.png")],
        },
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def make_folder(root: Path) -> Path:
    png(root / "good/b.png")
    png(root / "good/a.jpg")
    png(root / "scratch/s1.png")
    png(root / "masks/scratch/s1.png", value=255)
    png(root / "dent/d1.png")
    png(root / "ground_truth/dent/d1_mask.png", value=255)
    png(root / "stain/x.png")  # no mask folder for this defect: mask stays None
    return root


# --------------------------------------------------------------------------- formats


def test_mvtec_labels_masks_categories_and_order(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    ds = open_dataset(root)
    assert ds == Dataset(root, "mvtec", ("bottle", "screw"))
    test = ds.samples("bottle")
    assert names(test) == ["broken/000.png", "broken/001.png", "crack/000.png", "crack/001.png", "good/000.png"]
    assert [s.label for s in test] == [1, 1, 1, 1, 0]
    assert test[0].mask_path == root / "bottle/ground_truth/broken/000_mask.png"
    assert test[-1].mask_path is None
    assert {(s.category, s.split) for s in test} == {("bottle", "test")}
    train = ds.samples("bottle", "train")
    assert names(train) == ["good/000.png", "good/001.png"] and {s.label for s in train} == {0}
    assert ds.samples("bottle") == test  # deterministic


def test_mpdd_is_an_mvtec_layout(tmp_path: Path) -> None:
    ds = open_dataset(make_mvtec(tmp_path / "mpdd", ("metal_plate",)), format="mpdd")
    assert ds.format == "mpdd" and ds.categories == ("metal_plate",)
    assert len(ds.samples("metal_plate")) == 5


def test_btad_ok_ko_with_mixed_extensions(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "btad")
    ds = open_dataset(root)
    assert (ds.format, ds.categories) == ("btad", ("01", "02"))
    one = ds.samples("01")
    assert [(s.image_path.name, s.label, s.defect_type) for s in one] == [
        ("0001.bmp", 1, "ko"),
        ("0000.bmp", 0, "good"),
    ]
    assert one[0].mask_path == root / "01/ground_truth/ko/0001.png"
    assert ds.samples("02")[0].mask_path == root / "02/ground_truth/ko/0001.bmp"
    assert [s.image_path.name for s in ds.samples("02", "train")] == ["0000.png"]


def test_visa_csv(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    ds = open_dataset(root)
    assert (ds.format, ds.categories) == ("visa", ("candle", "pcb1"))
    test = ds.samples("pcb1")
    assert [(s.image_path, s.label, s.mask_path, s.defect_type) for s in test] == [
        (root / "pcb1/Data/Images/Normal/0001.JPG", 0, None, "good"),
        (root / "pcb1/Data/Images/Anomaly/0000.JPG", 1, root / "pcb1/Data/Masks/Anomaly/0000.png", "anomaly"),
    ]
    assert [s.label for s in ds.samples("candle")] == [1, 0]  # file order kept
    assert [s.split for s in ds.samples("pcb1", "train")] == ["train"]


def test_metajson(tmp_path: Path) -> None:
    root = make_metajson(tmp_path / "meta")
    ds = open_dataset(root)
    assert (ds.format, ds.categories) == ("metajson", ("carpet", "wood"))
    test = ds.samples("wood")
    assert [(s.image_path.name, s.label, s.defect_type) for s in test] == [
        ("003.png", 1, "hole"),
        ("001.png", 0, "good"),
    ]
    assert test[0].mask_path == root / "wood/ground_truth/hole/003_mask.png" and test[1].mask_path is None
    assert len(ds.samples("wood", "train")) == 1


def test_folder_with_optional_masks(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "parts")
    ds = open_dataset(root)
    assert (ds.format, ds.categories) == ("folder", ("parts",))
    test = ds.samples("parts")
    assert names(test) == ["dent/d1.png", "good/a.jpg", "good/b.png", "scratch/s1.png", "stain/x.png"]
    assert [s.label for s in test] == [1, 0, 0, 1, 1]
    masks = {s.image_path.name: s.mask_path for s in test}
    assert masks == {
        "d1.png": root / "ground_truth/dent/d1_mask.png",
        "a.jpg": None,
        "b.png": None,
        "s1.png": root / "masks/scratch/s1.png",
        "x.png": None,
    }


def test_folder_mask_with_suffix_does_not_match_longer_stem(tmp_path: Path) -> None:
    root = tmp_path / "f"
    png(root / "cut/img1.png")
    png(root / "masks/cut/img10.png", value=255)
    png(root / "masks/cut/img1_gt.png", value=255)
    assert open_dataset(root).samples("f")[0].mask_path == root / "masks/cut/img1_gt.png"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (make_mvtec, "mvtec"),
        (make_visa, "visa"),
        (make_metajson, "metajson"),
        (make_btad, "btad"),
        (make_folder, "folder"),
    ],
)
def test_auto_detection(tmp_path: Path, make: Callable[[Path], Path], expected: str) -> None:
    root = make(tmp_path / "data")
    assert detect_format(root) == expected
    assert open_dataset(root, format="auto").format == expected


def test_meta_json_wins_and_format_overrides(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    (root / "meta.json").write_text(json.dumps({"test": {"bottle": []}}))
    assert detect_format(root) == "metajson"
    assert open_dataset(root, format="mvtec").format == "mvtec"


def test_category_filter(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    ds = open_dataset(root, categories=["screw"])
    assert ds.categories == ("screw",)
    assert open_dataset(root, categories="bottle").categories == ("bottle",)
    with pytest.raises(DatasetError, match=r"unknown category 'bottle'.*available: screw"):
        ds.samples("bottle")


# --------------------------------------------------------------------------- errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"dataset root {escaped(tmp_path / 'nope')} does not exist"):
        open_dataset(tmp_path / "nope")


def test_unknown_category_lists_available(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown category 'cable' in .*available: bottle, screw"):
        open_dataset(make_mvtec(tmp_path / "mvtec"), categories=["cable"])


def test_unknown_format_and_split(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    with pytest.raises(UsageError, match="unknown dataset format 'kolektor'"):
        open_dataset(root, format="kolektor")
    with pytest.raises(UsageError, match="unknown split 'val'"):
        open_dataset(root).samples("bottle", "val")


def test_missing_mask_names_expected_path(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    (root / "bottle/ground_truth/crack/001_mask.png").unlink()
    expected = root / "bottle/ground_truth/crack/001_mask.png"
    with pytest.raises(DatasetError, match=f"{escaped(root / 'bottle/test/crack/001.png')}.*{escaped(expected)}"):
        open_dataset(root).samples("bottle")


def test_folder_missing_mask_when_mask_folder_exists(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "parts")
    png(root / "scratch/s2.png")
    with pytest.raises(DatasetError, match=escaped(root / "masks/scratch/s2.png")):
        open_dataset(root).samples("parts")


def test_empty_split(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    for image in (root / "screw/test").rglob("*.png"):
        image.unlink()
    with pytest.raises(DatasetError, match=f"no test images for category 'screw' in {escaped(root)}"):
        open_dataset(root).samples("screw")
    with pytest.raises(DatasetError, match="no train images for category 'parts'"):
        open_dataset(make_folder(tmp_path / "parts")).samples("parts", "train")


def test_visa_missing_columns(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa", header=("object", "split", "label", "img", "msk"))
    with pytest.raises(DatasetError, match=f"{escaped(root / 'split_csv/1cls.csv')}: missing column.*image, mask"):
        open_dataset(root)


def test_visa_bad_label_and_missing_mask(tmp_path: Path) -> None:
    rows = [("pcb1", "test", "defect", "pcb1/a.JPG", "")]
    root = make_visa(tmp_path / "v1", rows)
    with pytest.raises(DatasetError, match=r"1cls\.csv line 2: label 'defect'"):
        open_dataset(root).samples("pcb1")
    rows = [("pcb1", "test", "anomaly", "pcb1/a.JPG", "pcb1/m.png")]
    root = make_visa(tmp_path / "v2", rows)
    (root / "pcb1/m.png").unlink()
    with pytest.raises(DatasetError, match=f"expected {escaped(root / 'pcb1/m.png')}"):
        open_dataset(root).samples("pcb1")


def test_metajson_missing_keys_and_image(tmp_path: Path) -> None:
    root = make_metajson(tmp_path / "meta")
    meta = json.loads((root / "meta.json").read_text())
    del meta["test"]["wood"][0]["mask_path"], meta["test"]["wood"][0]["anomaly"]
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"meta\.json: test/wood entry 0: missing key\(s\) mask_path, anomaly"):
        open_dataset(root).samples("wood")
    (root / "carpet/test/good/000.png").unlink()
    with pytest.raises(DatasetError, match=f"image {escaped(root / 'carpet/test/good/000.png')} does not exist"):
        open_dataset(root).samples("carpet")


def test_metajson_bad_structure(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"val": {}}))
    with pytest.raises(DatasetError, match=f"{escaped(tmp_path / 'meta.json')}: expected an object"):
        open_dataset(tmp_path)


def test_single_category_root_is_explained(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    with pytest.raises(DatasetError, match=f"pass its parent folder {escaped(root)} and choose the category 'bottle'"):
        open_dataset(root / "bottle")
    assert open_dataset(root / "bottle", format="folder").format == "folder"


# --------------------------------------------------------------------------- masks


def test_load_mask(tmp_path: Path) -> None:
    empty = load_mask(None, SIZE)
    assert empty.shape == (4, 6) and empty.dtype == bool and not empty.any()
    mask = load_mask(png(tmp_path / "m.png", value=1), SIZE)
    assert mask.dtype == bool and mask.sum() == 1 and mask[0, 0]
    rgb = load_mask(png(tmp_path / "rgb.png", value=255, mode="RGB"), SIZE)
    assert rgb.shape == (4, 6) and rgb.sum() == 1


def test_load_mask_size_mismatch(tmp_path: Path) -> None:
    mask = png(tmp_path / "m.png", size=(5, 4))
    image = tmp_path / "img.png"
    with pytest.raises(DatasetError, match=f"mask {escaped(mask)} is 5x4 but image {escaped(image)} is 6x4"):
        load_mask(mask, SIZE, image_path=image)
    with pytest.raises(DatasetError, match=f"mask {escaped(tmp_path / 'none.png')} does not exist"):
        load_mask(tmp_path / "none.png", SIZE)


def test_check_mask_size(tmp_path: Path) -> None:
    image = png(tmp_path / "img.png")
    check_mask_size(png(tmp_path / "ok.png"), image)
    bad = png(tmp_path / "bad.png", size=(8, 8))
    with pytest.raises(DatasetError, match=f"mask {escaped(bad)} is 8x8 but image {escaped(image)} is 6x4"):
        check_mask_size(bad, image)
