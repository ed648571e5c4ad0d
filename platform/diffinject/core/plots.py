"""Pictures people would rather look at than read: image grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffinject.core.errors import ConfigError

# PIL's Image.MAX_IMAGE_PIXELS: a larger PNG opens only with a DecompressionBombWarning (and with
# an error from twice that), and each such grid holds over 250 MB of pixels in memory
MAX_PNG_PIXELS = 89_478_485


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save as PNG under a temporary name, then rename into place."""
    from diffinject.core.atomic import atomic_file

    path = Path(path)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, dpi=110, format="png")
    pyplot().close(fig)
    return path


def image_grid(path: Path, images: np.ndarray, captions: list[str], title: str, columns: int = 10) -> Path:
    """Save uint8 N x H x W x 3 images in a captioned grid (PNG)."""
    plt = pyplot()

    n = len(images)
    rows = max(1, -(-n // columns))
    cols = min(columns, max(n, 1))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def grid_shape(n: int, height: int, width: int, columns: int = 10, gap: int = 2) -> tuple[int, int]:
    """(height, width) in pixels of `n` height x width images tiled by tile_images."""
    cols = min(columns, n)
    rows = -(-n // cols)
    return rows * (height + gap) + gap, cols * (width + gap) + gap


def tile_images(images: np.ndarray, columns: int = 10, gap: int = 2) -> np.ndarray:
    """uint8 N x H x W x 3 images tiled row by row into one uint8 image (white gaps)."""
    n, h, w, c = images.shape
    cols = min(columns, n)
    out = np.full((*grid_shape(n, h, w, columns, gap), c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, cols)
        out[gap + r * (h + gap):gap + r * (h + gap) + h, gap + col * (w + gap):gap + col * (w + gap) + w] = image
    return out


def check_png_pixels(height: int, width: int, what: str) -> None:
    """ConfigError when a height x width picture (`what`) is over MAX_PNG_PIXELS, before any
    memory is taken for it."""
    if height * width > MAX_PNG_PIXELS:
        raise ConfigError(f"{what} would be {width} x {height} = {width * height:,} pixels, over the limit of "
                          f"{MAX_PNG_PIXELS:,} (PIL's decompression-bomb bound)")


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """A uint8 H x W x 3 image as PNG bytes, enlarged `scale` times (nearest neighbour)."""
    import io

    from PIL import Image

    check_png_pixels(image.shape[0] * scale, image.shape[1] * scale, f"the picture enlarged {scale} times")
    picture = Image.fromarray(image)
    if scale > 1:
        picture = picture.resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def curve_plot(path: Path, curves: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str,
               ylabel: str, log_y: bool = False) -> Path:
    """Save one line per {label: (x, y)} in a PNG."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def triptych(path: Path, originals: np.ndarray, contents: np.ndarray, generated: np.ndarray, title: str,
             captions: list[str] | None = None, names: tuple[str, str, str] = ("original", "content", "generated")
             ) -> Path:
    """The paper's Fig. 2 layout: rows original | content | generated (or `names`), one pair per column."""
    plt = pyplot()

    n = len(generated)
    fig, axes = plt.subplots(3, max(n, 1), figsize=(1.3 * max(n, 1) + 0.8, 4.4), squeeze=False)
    for row, (name, images) in enumerate(zip(names, (originals, contents, generated))):
        for col in range(max(n, 1)):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < n:
                ax.imshow(images[col], interpolation="nearest")
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
            if row == 0 and captions and col < n:
                ax.set_title(captions[col], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
