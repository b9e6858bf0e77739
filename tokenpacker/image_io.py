"""Opening user images safely: one clear message for anything unusable, RGB out.

EXIF orientation is applied, the first frame of an animation is used, transparency is composited on
white, 16-bit and float images are scaled to 8 bits, and images too large to decode safely
(decompression bombs) are refused before their pixels are read.
"""

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

MAX_PIXELS = 80_000_000  # refuse to decode more (a 10000 x 8000 photo passes)
MAX_ASPECT = 50  # longer side / shorter side
MIN_SIDE = 2  # pixels


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        if image.mode == "F" and pixels.max() <= 1.0:
            high = 1.0
        image = Image.fromarray(np.clip(pixels / high * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def open_image(source, name: str | None = None) -> Image.Image:
    """A PIL image, a path or raw bytes -> an RGB PIL image, or ImageError with a one-line reason."""
    label = name or (Path(source).name if isinstance(source, (str, Path)) else "the image")
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
        except OSError as e:
            raise ImageError(f"cannot open {label}: {e.strerror or e}") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(stream)
        except UnidentifiedImageError:
            raise ImageError(f"{label} is not an image file this app can read (PNG, JPEG, WebP, GIF, BMP, TIFF)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{label} is too large to decode safely (over {MAX_PIXELS // 1_000_000} megapixels)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(f"{label} could not be read: {e}") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{label} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); the limit is "
            f"{MAX_PIXELS // 1_000_000} megapixels"
        )
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image) or image
        image = _to_rgb(image)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{label} is truncated or corrupt: {e}") from None
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{label} is only {width}x{height} pixels; it needs at least {MIN_SIDE} pixels per side")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            f"{label} is {width}x{height} pixels, an aspect ratio beyond {MAX_ASPECT}:1; crop it to something less extreme"
        )
    return image
