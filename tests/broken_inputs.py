"""A catalogue of awkward image files, written on demand, shared by the library, CLI and app tests."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_with_size(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims width x height (a decompression bomb's header)."""
    raw = io.BytesIO()
    Image.new("L", (8, 8)).save(raw, format="PNG")
    data = bytearray(raw.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF)
    return bytes(data)


def write_catalogue(directory: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, expected message fragment, or None when the file must be accepted)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}

    def put(name: str, content: bytes, expect: str | None):
        path = directory / name
        path.write_bytes(content)
        out[name.rsplit(".", 1)[0]] = (path, expect)

    good = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(good, format="PNG")
    put("not-an-image.png", b"%PDF-1.4 this is a document, not a picture", "not an image file")
    put("empty.png", b"", "not an image file")
    put("truncated.png", good.getvalue()[: len(good.getvalue()) // 2], "truncated or corrupt")
    put("corrupt.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "not an image file")
    put("bomb.png", _png_with_size(30000, 30000), "too large")
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1), (0, 0, 0)).save(tiny, format="PNG")
    put("one-pixel.png", tiny.getvalue(), "1x1")
    strip = io.BytesIO()
    Image.new("RGB", (20000, 20), (0, 90, 0)).save(strip, format="PNG")
    put("strip-20000x20.png", strip.getvalue(), "aspect ratio")

    def accepted(name: str, image: Image.Image, fmt: str, **kwargs):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kwargs)
        put(name, buffer.getvalue(), None)

    rgba = Image.new("RGBA", (80, 60), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (20, 20, 60, 40))
    accepted("rgba.png", rgba, "PNG")
    accepted("la.png", Image.new("LA", (40, 30), (128, 200)), "PNG")
    accepted("cmyk.jpg", Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG")
    sixteen = Image.fromarray((np.arange(60 * 40).reshape(40, 60) * 27).astype(np.uint16))
    accepted("sixteen-bit.png", sixteen, "PNG")
    palette = Image.new("P", (50, 40), 0)  # index 0: black, but transparent
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (10, 10, 40, 30))
    accepted("palette.png", palette, "PNG", transparency=0)
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", buffer.getvalue(), None)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    accepted("exif-rotated.jpg", Image.new("RGB", (80, 40), (10, 120, 240)), "JPEG", exif=exif.tobytes())
    return out
