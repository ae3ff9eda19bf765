"""Tests for zsad.data.images: every input mode loads to RGB, every bad file is one clear error."""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from zsad.data.images import IMAGE_EXTENSIONS, InputImage, discover_images, load_image
from zsad.errors import ImageError, UsageError


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` but holds almost no pixel data (cheap 'huge' image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)))
    return path


def _error_pattern(path: Path, problem: str) -> str:
    return re.escape(f"{path}: {problem}")


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("1", ".png"),
        ("L", ".png"),
        ("LA", ".png"),
        ("P", ".png"),
        ("RGB", ".jpg"),
        ("RGBA", ".png"),
        ("RGBA", ".webp"),
        ("CMYK", ".jpg"),
        ("CMYK", ".tif"),
        ("YCbCr", ".tif"),
        ("I;16", ".png"),
        ("I;16B", ".tif"),
        ("I", ".tif"),
        ("F", ".tif"),
        ("RGB", ".bmp"),
    ],
)
def test_every_mode_loads_as_rgb(tmp_path: Path, mode: str, suffix: str) -> None:
    path = _save(Image.new(mode, (7, 5)), tmp_path / f"img{suffix}")
    if not _pillow_reads(path):  # Pillow 12.x cannot read back its own YCbCr TIFF (13.0 can)
        with pytest.raises(ImageError, match="truncated or corrupt"):
            load_image(path)
        return
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (7, 5)


def _pillow_reads(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("size", [(1, 1), (1, 500), (500, 1)])
def test_tiny_and_thin_images(tmp_path: Path, size: tuple[int, int]) -> None:
    path = _save(Image.new("RGB", size, (10, 20, 30)), tmp_path / "thin.png")
    image = load_image(path)
    assert image.size == size
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_loaded_image_is_detached_from_file(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (4, 4), (1, 2, 3)), tmp_path / "a.png")
    image = load_image(path)
    path.unlink()  # the file must already be closed and fully read
    assert np.asarray(image).shape == (4, 4, 3)


@pytest.mark.parametrize(("dtype", "suffix"), [(np.uint16, ".png"), (np.dtype(">u2"), ".tif")])
def test_16bit_gradient_is_scaled_not_clipped(tmp_path: Path, dtype: object, suffix: str) -> None:
    ramp = np.linspace(1000, 4000, 64).astype(np.uint16)  # 12-bit data in a 16-bit container
    data = np.tile(ramp, (3, 1)).astype(dtype)
    mode = "I;16B" if np.dtype(dtype).byteorder == ">" else "I;16"
    source = Image.frombytes(mode, (64, 3), data.tobytes())
    path = _save(source, tmp_path / f"grad{suffix}")
    row = np.asarray(load_image(path))[1, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0)
    assert row[-1] - row[0] >= 200


def test_32bit_int_and_float_are_scaled(tmp_path: Path) -> None:
    ints = np.tile(np.arange(-50_000, 50_000, 1000, dtype=np.int32), (2, 1))
    floats = np.tile(np.linspace(0.0, 1.0, 100, dtype=np.float32), (2, 1))
    floats[0, 0] = np.nan
    for name, array in (("i.tif", ints), ("f.tif", floats)):
        path = _save(Image.fromarray(array), tmp_path / name)
        row = np.asarray(load_image(path))[1, :, 0].astype(int)
        assert np.all(np.diff(row) >= 0)
        assert row[0] <= 5 and row[-1] >= 250


def test_palette_with_transparency_composites_on_black(tmp_path: Path) -> None:
    image = Image.new("P", (4, 2))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (2, 0, 4, 2))  # right half green, left half red
    path = _save(image, tmp_path / "pal.png", transparency=0)  # red index is transparent
    rgb = load_image(path)
    assert rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((3, 1)) == (0, 255, 0)


def test_rgba_and_la_composite_on_black(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (2, 1), (200, 100, 50, 0))
    rgba.putpixel((1, 0), (200, 100, 50, 255))
    la = Image.new("LA", (2, 1), (180, 128))
    assert load_image(_save(rgba, tmp_path / "a.png")).getpixel((0, 0)) == (0, 0, 0)
    assert load_image(_save(rgba, tmp_path / "a.png")).getpixel((1, 0)) == (200, 100, 50)
    value = load_image(_save(la, tmp_path / "la.png")).getpixel((0, 0))
    assert value[0] == value[1] == value[2] and 85 <= value[0] <= 95


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 0))
    stored.paste((255, 0, 0), (0, 0, 8, 8))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90 degree clockwise turn
    path = _save(stored, tmp_path / "rot.jpg", exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    assert pixels[2:6, -6:-2, 0].mean() > 200  # marker now in the top-right corner
    assert pixels[2:6, 2:6, 0].mean() < 50


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=_error_pattern(path, "file does not exist")):
        load_image(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=_error_pattern(tmp_path, "is a directory")):
        load_image(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=_error_pattern(path, "empty file (0 bytes)")):
        load_image(path)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text\n")
    with pytest.raises(ImageError, match=_error_pattern(path, "not an image file (format not recognised)")):
        load_image(path)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=_error_pattern(path, "truncated or corrupt image data: ")) as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_garbage_after_png_signature(tmp_path: Path) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ImageError, match=re.escape(str(path))):
        load_image(path)


def test_oversized_checked_from_header_before_decoding(tmp_path: Path) -> None:
    # The header claims 5000 x 5000 but no pixel data exists: decoding would fail as
    # truncated, so the size message proves the check ran before any decoding.
    path = _png_header_only(tmp_path / "big.png", 5000, 5000)
    problem = "image is 5000 x 5000 = 25000000 pixels, over the limit of 1000 pixels (decompression-bomb guard)"
    with pytest.raises(ImageError, match=_error_pattern(path, problem)):
        load_image(path, max_pixels=1000)
    with pytest.raises(ImageError, match="truncated or corrupt image data"):
        load_image(path)


def test_real_oversized_image_is_refused(tmp_path: Path) -> None:
    path = _save(Image.new("L", (300, 200)), tmp_path / "flat.png")
    with pytest.raises(ImageError, match=re.escape("image is 300 x 200 = 60000 pixels, over the limit of 59999")):
        load_image(path, max_pixels=59_999)
    assert load_image(path, max_pixels=60_000).size == (300, 200)


def test_pil_decompression_bomb_error_is_caught(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageError, match=_error_pattern(path, "image is 10000000000 pixels, over the limit of")):
        load_image(path)


def test_pil_bomb_warning_does_not_leak_and_globals_untouched(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    path = _png_header_only(tmp_path / "warn.png", 10_000, 9_000)  # above PIL's warning threshold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="truncated or corrupt image data"):
            load_image(path)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == before


def test_bad_max_pixels_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="max_pixels"):
        load_image(tmp_path / "x.png", max_pixels=0)


# --------------------------------------------------------------------------- discovery


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    tiny = Image.new("RGB", (2, 2))
    for name in ["a.png", "B.JPG", "sub/c.TIFF", "sub/deep/d.webp", "sub/f.jpeg", ".hidden.png", ".git/e.png"]:
        _save(tiny, root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "deep" / "readme.md").write_text("x")
    return root


def _rels(items: list[InputImage]) -> list[str]:
    return [str(item.relative) for item in items]


def test_folder_is_recursive_sorted_case_insensitive_and_skips_hidden(tree: Path) -> None:
    found = discover_images([tree])
    assert _rels(found) == ["B.JPG", "a.png", "sub/c.TIFF", "sub/deep/d.webp", "sub/f.jpeg"]
    assert all(item.path.is_file() for item in found)
    assert all(isinstance(item.relative, PurePosixPath) for item in found)


def test_discovery_is_deterministic(tree: Path) -> None:
    assert discover_images([str(tree)]) == discover_images([tree])


def test_single_file_relative_is_its_name_even_if_not_an_image(tree: Path) -> None:
    found = discover_images([tree / "sub" / "deep" / "d.webp", tree / "notes.txt"])
    assert _rels(found) == ["d.webp", "notes.txt"]


def test_glob_star_question_and_brackets(tree: Path) -> None:
    assert _rels(discover_images([str(tree / "*.png")])) == ["a.png"]
    assert _rels(discover_images([str(tree / "sub" / "?.jpeg")])) == ["f.jpeg"]
    assert _rels(discover_images([str(tree / "[aB].*")])) == ["B.JPG", "a.png"]


def test_glob_recursive_double_star(tree: Path) -> None:
    found = discover_images([str(tree / "**" / "*.*")])
    assert _rels(found) == ["B.JPG", "a.png", "sub/c.TIFF", "sub/deep/d.webp", "sub/f.jpeg"]


def test_glob_relative_to_its_literal_prefix(tree: Path) -> None:
    assert _rels(discover_images([str(tree / "s*" / "deep" / "*.webp")])) == ["sub/deep/d.webp"]
    # a matched folder is searched like a folder input, named from the glob base
    assert _rels(discover_images([str(tree / "s*")])) == ["sub/c.TIFF", "sub/deep/d.webp", "sub/f.jpeg"]


def test_glob_relative_to_cwd(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    assert _rels(discover_images(["**/*.jpeg"])) == ["sub/f.jpeg"]


def test_relative_never_escapes(tree: Path) -> None:
    for item in discover_images([str(tree / "sub" / "*" / ".." / "*.jpeg"), str(tree / "sub" / ".." / "*.png")]):
        assert not item.relative.is_absolute()
        assert ".." not in item.relative.parts


def test_literal_path_with_glob_characters(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "scan[1].png")
    assert _rels(discover_images([path])) == ["scan[1].png"]


def test_duplicates_removed_keeping_first(tree: Path) -> None:
    found = discover_images([tree / "sub" / "f.jpeg", tree, str(tree / "**" / "*.jpeg")])
    assert _rels(found) == ["f.jpeg", "B.JPG", "a.png", "sub/c.TIFF", "sub/deep/d.webp"]
    assert len({item.path.resolve() for item in found}) == len(found)


def test_inputs_keep_given_order(tree: Path) -> None:
    found = discover_images([tree / "sub", tree / "a.png"])
    assert _rels(found) == ["c.TIFF", "deep/d.webp", "f.jpeg", "a.png"]


def test_error_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=re.escape(f"does not exist: {tmp_path / 'gone'}")):
        discover_images([tmp_path / "gone"])


def test_error_folder_without_images(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    _save(Image.new("RGB", (2, 2)), folder / ".hidden.png")
    (folder / "notes.txt").write_text("x")
    message = f"no images found in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})"
    with pytest.raises(UsageError, match=re.escape(message)):
        discover_images([folder])


def test_error_glob_matches_nothing(tree: Path) -> None:
    pattern = str(tree / "*.gif")
    with pytest.raises(UsageError, match=re.escape(pattern)):
        discover_images([pattern])
    with pytest.raises(UsageError, match="matched no image files"):
        discover_images([str(tree / "*.txt")])


def test_error_no_inputs() -> None:
    with pytest.raises(UsageError, match="no inputs"):
        discover_images([])
