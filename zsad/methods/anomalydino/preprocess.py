"""AnomalyDINO's image preparation: shorter side resized, ImageNet normalisation, top-left crop; rotated references.

Read from dammsi/AnomalyDINO ``src/backbones.py`` (``DINOv2Wrapper.prepare_image``) and ``src/utils.py``
(``augment_image``, ``rotate_image``):

- ``transforms.Resize(size)`` on a PIL image: the shorter side becomes ``size``, the longer
  ``int(size * long / short)`` (torchvision truncates), PIL bicubic (antialiased by construction); an image already
  at that size is left as it is;
- ``ToTensor`` (``/ 255``) and ``Normalize`` with the ImageNet mean and std;
- a crop of the bottom and right edges to multiples of the patch size (the crop keeps the TOP-LEFT corner; anomalib's
  port crops the centre). The anomaly map is later stretched over the whole original image, crop included, as the
  official ``dists2map`` does, so a map is offset by at most one patch's fraction of the dropped strip;
- references rotated by 0, 45, ..., 315 degrees about the image centre with ``cv2.warpAffine`` (bilinear, border
  ``BORDER_DEFAULT`` = reflect-101), same canvas size. OpenCV itself does it here: its fixed-point bilinear
  arithmetic differs between versions, so only OpenCV reproduces OpenCV.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from zsad.errors import UsageError

#: the official augmentation angles (``augment_image``)
ROTATION_ANGLES = (0, 45, 90, 135, 180, 225, 270, 315)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """``(width, height)`` after torchvision's ``Resize(shorter)``: the shorter side becomes ``shorter``, the
    longer is truncated to ``int(shorter * long / short)``."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def prepare(image: Image.Image, shorter: int, patch: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[3, H, W]`` normalised tensor, ``H`` and ``W`` multiples of ``patch`` (top-left crop)."""
    rgb = image.convert("RGB")
    size = resized_size(*rgb.size, shorter)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.BICUBIC)
    tensor = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    tensor = tensor.sub(torch.as_tensor(mean, dtype=torch.float32)[:, None, None])
    tensor = tensor.div(torch.as_tensor(std, dtype=torch.float32)[:, None, None])
    height, width = tensor.shape[1:]
    if height < patch or width < patch:
        raise UsageError(f"image of {rgb.size[0]} x {rgb.size[1]} after resizing is smaller than one {patch}-pixel "
                         f"patch; use a larger --image-size")
    return tensor[:, : height - height % patch, : width - width % patch].contiguous()


def rotations(image: Image.Image, angles: Sequence[float] = ROTATION_ANGLES) -> list[Image.Image]:
    """The image rotated by each angle about its centre on the same canvas, as the official ``rotate_image``."""
    try:
        import cv2
    except ImportError as exc:  # a core dependency; a broken install says so in one line
        raise UsageError("rotating references needs OpenCV: pip install opencv-python-headless") from exc
    array = np.asarray(image.convert("RGB"))
    height, width = array.shape[:2]
    center = (width / 2, height / 2)
    out = []
    for angle in angles:
        matrix = cv2.getRotationMatrix2D(center, angle, 1.0)
        rotated = cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_DEFAULT)
        out.append(Image.fromarray(rotated))
    return out
