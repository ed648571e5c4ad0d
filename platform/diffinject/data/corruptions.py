"""The ten corruptions of LfF's Corrupted CIFAR-10 "type 0" protocol, in numpy/scipy/PIL.

The formulas and per-severity parameters are those of Hendrycks & Dietterich's CIFAR-10-C
generator (`make_cifar_c.py`, the 32x32 parameters, which LfF copied), with the OpenCV,
scikit-image and ImageMagick (wand) calls replaced by equivalents:

- ImageMagick's MotionBlurImage (snow) is re-implemented: a one-sided Gaussian kernel of
  2*ceil(radius)+1 taps along the angle, edge-replicated borders, 8-bit output;
- cv2.resize(fx=fy=0.2, INTER_LINEAR) (frost) samples source pixel 5k+2 exactly, so it is
  a strided slice;
- cv2.warpAffine(BORDER_REFLECT_101) (elastic) is map_coordinates(mode="mirror");
- skimage's gaussian is scipy's gaussian_filter, its rgb2hsv/hsv2rgb are re-implemented.

Like the reference, float results are truncated (not rounded) to uint8. Every random draw
goes through the caller's generator, in the reference's order.
"""
from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

from diffinject.core.errors import DataError

CORRUPTIONS = ("snow", "frost", "fog", "brightness", "contrast", "spatter", "elastic_transform",
               "jpeg_compression", "pixelate", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_SHAPE = (32, 32, 3)  # the CIFAR-10-C parameters are calibrated for 32x32 images
FROST_INSTALL = "pip install --no-deps imagecorruptions==1.1.2"
# make_cifar_c.py lists frost6.jpg as well but draws np.random.randint(5): it is never used.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")

# make_cifar_c.py parameters, indexed by severity - 1.
SNOW = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)]
FROST = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)]
FOG = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)]
BRIGHTNESS = [0.05, 0.1, 0.15, 0.2, 0.3]
CONTRAST = [0.75, 0.5, 0.4, 0.3, 0.15]
SPATTER = [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
           (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)]
ELASTIC = [(32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07), (32 * 0.08, 32 * 0.06, 32 * 0.06),
           (32 * 0.1, 32 * 0.04, 32 * 0.05), (32 * 0.1, 32 * 0.03, 32 * 0.03)]
JPEG_QUALITY = [80, 65, 58, 50, 40]
PIXELATE = [0.95, 0.9, 0.85, 0.75, 0.65]
SATURATE = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)]
MUD_BROWN = np.array([63, 42, 20]) / 255.0


def corrupt(image: np.ndarray, name: str, rng: np.random.Generator, severity: int = 5) -> np.ndarray:
    """Apply corruption `name` at `severity` (1..5) to a 32x32x3 uint8 image."""
    function = _FUNCTIONS.get(name)
    if function is None:
        raise ValueError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
    if not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"invalid severity {severity!r}; expected one of 1, 2, 3, 4, 5")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != IMAGE_SHAPE:
        raise ValueError(f"expected a uint8 image of shape {IMAGE_SHAPE}, got {image.dtype} {image.shape}")
    out = function(image, int(severity) - 1, rng)
    return np.clip(out, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- helpers


def clipped_zoom(layer: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of a square 2-D layer by `factor`, keeping its size."""
    size = layer.shape[0]
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    zoomed = zoom(layer[top:top + crop, top:top + crop], factor, order=1)
    trim = (zoomed.shape[0] - size) // 2
    return zoomed[trim:trim + size, trim:trim + size]


def motion_blur(layer: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage on a 2-D layer: pixel (y, x) averages the pixels at
    offsets ceil(i * (sin, cos)(angle) - 0.5), i = 0..2*ceil(radius), with weights
    exp(-i^2 / (2 sigma^2)); the image edge is replicated."""
    width = int(2 * math.ceil(radius) + 1)
    steps = np.arange(width)
    kernel = np.exp(-steps.astype(np.float64) ** 2 / (2.0 * sigma ** 2))
    kernel /= kernel.sum()
    theta = math.radians(angle)
    dy = np.ceil(steps * math.sin(theta) - 0.5).astype(int)
    dx = np.ceil(steps * math.cos(theta) - 0.5).astype(int)
    h, w = layer.shape
    rows = np.clip(np.arange(h)[None, :, None] + dy[:, None, None], 0, h - 1)
    cols = np.clip(np.arange(w)[None, None, :] + dx[:, None, None], 0, w - 1)
    return np.tensordot(kernel, layer[rows, cols], axes=1)


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] (mapsize a power of two), as in make_cifar_c.py."""
    maparray = np.zeros((mapsize, mapsize))
    stepsize = mapsize
    wibble = 100.0

    def wibbled_mean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squares = corners + np.roll(corners, shift=-1, axis=0)
        squares += np.roll(squares, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbled_mean(squares)
        centres = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbled_mean(left)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbled_mean(top)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv for floats in [0, 1] (hue in [0, 1), 0 for greys)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(-1)
    delta = value - rgb.min(-1)
    grey = delta == 0
    safe = np.where(grey, 1.0, delta)
    saturation = np.where(grey, 0.0, delta / np.where(value == 0, 1.0, value))
    hue = np.where(b == value, 4.0 + (r - g) / safe,
                   np.where(g == value, 2.0 + (b - r) / safe, (g - b) / safe))
    hue = np.where(grey, 0.0, (hue / 6.0) % 1.0)
    return np.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = sector.astype(int) % 6
    choices = np.stack([np.stack(c, axis=-1) for c in
                        ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return np.take_along_axis(choices, sector[None, ..., None].repeat(3, axis=-1), axis=0)[0]


def frost_dir() -> Path:
    """The frost textures shipped by the imagecorruptions package, found without importing
    it (its import needs pkg_resources, which modern setuptools no longer provides)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the frost corruption needs Hendrycks' frost textures; install them with "
                        f"`{FROST_INSTALL}`")
    return Path(spec.submodule_search_locations[0]) / "frost"


@lru_cache(maxsize=1)
def frost_textures() -> tuple[np.ndarray, ...]:
    """The frost textures as RGB uint8, downscaled by 0.2 like make_cifar_c.py does."""
    textures = []
    for name in FROST_FILES:
        path = frost_dir() / name
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except OSError as exc:
            raise DataError(f"{path}: cannot read the frost texture ({exc}); reinstall it with "
                            f"`{FROST_INSTALL}`") from None
        h, w = round(rgb.shape[0] * 0.2), round(rgb.shape[1] * 0.2)
        textures.append(rgb[2::5, 2::5][:h, :w])
    return tuple(textures)


def affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix mapping three (x, y) points onto three others (cv2.getAffineTransform)."""
    return np.linalg.solve(np.column_stack([src, np.ones(3)]), dst).T


# ------------------------------------------------------------ corruptions
# Each takes (uint8 image, severity index 0..4, rng) and returns values on the 0..255 scale.


def snow(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = SNOW[s]
    x = x.astype(np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = clipped_zoom(layer, c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8).astype(np.float64)
    layer = np.round(motion_blur(layer, c[4], c[5], rng.uniform(-135, -45))) / 255.0
    layer = layer[..., None]
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def frost(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = FROST[s]
    texture = frost_textures()[rng.integers(len(FROST_FILES))]
    h, w = x.shape[:2]
    top, left = rng.integers(0, texture.shape[0] - h), rng.integers(0, texture.shape[1] - w)
    return np.clip(c[0] * x + c[1] * texture[top:top + h, left:left + w], 0, 255)


def fog(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = FOG[s]
    x = x / 255.0
    max_val = x.max()
    h, w = x.shape[:2]
    x = x + c[0] * plasma_fractal(32, c[1], rng)[:h, :w, None]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def brightness(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    hsv = rgb_to_hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + BRIGHTNESS[s], 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255


def contrast(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * CONTRAST[s] + means, 0, 1) * 255


def spatter(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Mud spatter (severities 4 and 5); the water drops of severities 1-3 are built from
    OpenCV's Canny edges and distance transform, which are not re-implemented here."""
    c = SPATTER[s]
    if not c[5]:
        raise ValueError(f"spatter severity {s + 1} (water drops) is not supported; "
                         "spatter supports severities 4 and 5 (mud)")
    x = x.astype(np.float32) / 255.0
    liquid = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    liquid = gaussian_filter(liquid, sigma=c[2], mode="nearest")
    mask = gaussian_filter((liquid > c[3]).astype(np.float32), sigma=c[4], mode="nearest")
    mask[mask < 0.8] = 0
    mask = mask[..., None]
    return np.clip(x * (1 - mask) + MUD_BROWN * mask, 0, 1) * 255


def elastic_transform(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    alpha, sigma, max_shift = ELASTIC[s]
    image = x.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    centre = np.float32([h, w]) // 2
    side = min(h, w) // 3
    points = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    moved = points + rng.uniform(-max_shift, max_shift, size=points.shape).astype(np.float32)
    # cv2.warpAffine samples the source at the inverse of the point-to-point affine map.
    inverse = affine_from_points(moved.astype(np.float64), points.astype(np.float64))
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    src_x = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
    src_y = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
    image = np.stack([map_coordinates(image[..., k], [src_y, src_x], order=1, mode="mirror")
                      for k in range(3)], axis=-1)
    dx = (gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    dy = (gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3)
          * alpha).astype(np.float32)
    coords = [rows + dy, cols + dx]
    out = np.stack([map_coordinates(image[..., k], coords, order=1, mode="reflect")
                    for k in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def jpeg_compression(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    buffer = BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=JPEG_QUALITY[s])
    with Image.open(buffer) as img:
        return np.asarray(img.convert("RGB"))


def pixelate(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    small = Image.fromarray(x).resize((int(w * PIXELATE[s]), int(h * PIXELATE[s])), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX))


def saturate(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    scale, shift = SATURATE[s]
    hsv = rgb_to_hsv(x / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255


_FUNCTIONS = {"snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast,
              "spatter": spatter, "elastic_transform": elastic_transform,
              "jpeg_compression": jpeg_compression, "pixelate": pixelate, "saturate": saturate}
