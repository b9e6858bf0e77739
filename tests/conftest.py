import os
import warnings

import numpy as np
import pytest
from PIL import Image

from tests.checkpoints import make_clip_dir, make_tokenizer, write_official_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
warnings.filterwarnings("ignore", message=".*kernels.*")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    return make_clip_dir(tmp_path_factory.mktemp("clip"), released=False, seed=0)


@pytest.fixture(scope="session")
def official(tmp_path_factory, tokenizer_dir, clip_dir):
    """Factory: official-layout checkpoints, cached per option set for the session."""
    cache = {}

    def build(**options):
        key = tuple(sorted(options.items()))
        if key not in cache:
            directory = tmp_path_factory.mktemp("official")
            cache[key] = write_official_checkpoint(directory, tokenizer_dir, clip_dir, **options)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def pad_model(official):
    import tokenpacker

    return tokenpacker.load(official(scale_factor=2, aspect="pad"), device="cpu")


@pytest.fixture(scope="session")
def hd_model(official):
    import tokenpacker

    return tokenpacker.load(official(scale_factor=2, aspect="slice", patch_num=9), device="cpu")


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic image with structure (gradients and blocks), not noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 10 + 1, width // 3 + 2), rng.integers(height // 10 + 1, height // 3 + 2)
        pixels[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels.astype(np.uint8))
