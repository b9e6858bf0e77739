import numpy as np
import pytest
from PIL import Image

from tokenpacker import ImageError, open_image
from tests.broken_inputs import write_catalogue


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return write_catalogue(tmp_path_factory.mktemp("broken"))


REFUSED = ["not-an-image", "empty", "truncated", "corrupt", "bomb", "one-pixel", "strip-20000x20"]
ACCEPTED = ["rgba", "la", "cmyk", "sixteen-bit", "palette", "animated", "exif-rotated"]


@pytest.mark.parametrize("name", REFUSED)
def test_unusable_files_get_one_clear_line(catalogue, name):
    path, expected = catalogue[name]
    with pytest.raises(ImageError) as error:
        open_image(path)
    message = str(error.value)
    assert expected in message and path.name in message and "\n" not in message


@pytest.mark.parametrize("name", ACCEPTED)
def test_awkward_but_valid_files_become_rgb(catalogue, name):
    image = open_image(catalogue[name][0])
    assert image.mode == "RGB" and min(image.size) >= 2


def test_conversions_are_right(catalogue):
    rgba = np.array(open_image(catalogue["rgba"][0]))
    assert tuple(rgba[0, 0]) == (255, 255, 255)  # transparent -> white, not the hidden red
    assert tuple(rgba[30, 40]) == (0, 0, 255)
    assert open_image(catalogue["exif-rotated"][0]).size == (40, 80)  # EXIF orientation applied
    assert tuple(np.array(open_image(catalogue["animated"][0]))[0, 0]) == (255, 0, 0)  # first frame
    sixteen = np.array(open_image(catalogue["sixteen-bit"][0]))[..., 0]
    assert sixteen.max() > 200 and sixteen.min() < 10  # scaled from 16 bits, not clipped
    palette = np.array(open_image(catalogue["palette"][0]))
    assert tuple(palette[0, 0]) == (255, 255, 255) and tuple(palette[20, 20]) == (255, 0, 0)  # transparent index -> white
    cmyk = np.array(open_image(catalogue["cmyk"][0]))
    assert cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60  # cyan-free magenta+yellow = red


def test_missing_file_and_pil_images(tmp_path):
    with pytest.raises(ImageError, match="cannot open"):
        open_image(tmp_path / "missing.png")
    assert open_image(Image.new("L", (10, 10))).mode == "RGB"
    assert open_image(Image.new("RGB", (30, 20)).tobytes() and _png_bytes()).size == (30, 20)


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buffer, format="PNG")
    return buffer.getvalue()
