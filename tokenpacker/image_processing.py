"""From a PIL image to the CLIP views of one request, with the geometry of each view.

Pad mode reproduces LLaVA's `expand2square` + `CLIPImageProcessor` (PIL bicubic resize of the shortest
edge, centre crop, rescale and normalise in float32). Slice mode reproduces TokenPacker-HD: normalise at
the original resolution, bilinear resize onto the chosen grid's canvas (top-left), cut 336 px tiles, and
add the thumbnail of the padded canvas.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .configuration import TokenPackerConfig
from .layout import View, pad_views, slice_views
from .partition import Partition, choose_partition


@dataclass
class PreparedImage:
    pixel_values: torch.Tensor  # (V, 3, S, S) float32, normalised
    mode: str  # "pad" or "slice"
    image_size: tuple[int, int]  # original (w, h)
    views: list[View]
    partition: Partition | None  # slice mode only

    @property
    def grid(self) -> tuple[int, int]:
        return (self.partition.rows, self.partition.cols) if self.partition else (1, 1)


class ImageProcessor:
    def __init__(self, config: TokenPackerConfig):
        self.mode = config.image_aspect_ratio
        self.patch_num = config.patch_num
        self.view_size = config.view_size
        self.shortest_edge = config.image_shortest_edge
        self.crop_size = config.image_crop_size
        self.mean = np.array(config.image_mean, dtype=np.float32)
        self.std = np.array(config.image_std, dtype=np.float32)
        if self.crop_size != self.view_size:
            raise ValueError(f"crop size {self.crop_size} differs from the CLIP input size {self.view_size}")

    @property
    def pad_color(self) -> tuple[int, ...]:
        """LLaVA's padding colour, int(255 * mean) per channel: (122, 116, 104) for CLIP."""
        return tuple(int(m * 255) for m in self.mean.tolist())

    def __call__(self, image: Image.Image, max_tiles: int | None = None) -> PreparedImage:
        image = image.convert("RGB")
        if self.mode == "slice":
            return self.slice(image, max_tiles)
        return self.pad(image)

    def pad(self, image: Image.Image) -> PreparedImage:
        width, height = image.size
        side = max(width, height)
        square = Image.new("RGB", (side, side), self.pad_color)
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        # CLIPImageProcessor: resize shortest edge (a square stays square), centre crop, rescale, normalise.
        square = square.resize((self.shortest_edge, self.shortest_edge), resample=Image.BICUBIC)
        top = left = int((self.shortest_edge - self.crop_size) / 2)
        pixels = np.asarray(square)[top : top + self.crop_size, left : left + self.crop_size]  # (S, S, 3) uint8
        pixels = (pixels * (1 / 255)).astype(np.float32)
        pixels = (pixels - self.mean) / self.std
        pixel_values = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]  # (1, 3, S, S)
        views = pad_views((width, height), self.shortest_edge, self.crop_size)
        return PreparedImage(pixel_values, "pad", (width, height), views, None)

    def normalize(self, image: Image.Image) -> torch.Tensor:
        """ToTensor + Normalize at the image's own resolution: (1, 3, H, W) float32."""
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
        mean, std = torch.from_numpy(self.mean)[:, None, None], torch.from_numpy(self.std)[:, None, None]
        return pixels.sub_(mean).div_(std)[None]

    def slice(self, image: Image.Image, max_tiles: int | None = None) -> PreparedImage:
        width, height = image.size
        size = self.view_size
        partition = choose_partition(height, width, self.patch_num, size, max_tiles)
        pixels = self.normalize(image)  # (1, 3, H, W)

        canvas = torch.zeros(1, 3, *partition.canvas_size)  # zero = the mean colour after normalisation
        resized_h, resized_w = partition.resized_size
        canvas[:, :, :resized_h, :resized_w] = F.interpolate(pixels, size=(resized_h, resized_w), mode="bilinear")
        tiles = (
            canvas.view(3, partition.rows, size, partition.cols, size)  # (3, rows, S, cols, S)
            .permute(1, 3, 0, 2, 4)  # (rows, cols, 3, S, S)
            .reshape(partition.num_tiles, 3, size, size)
        )
        views = [tiles]
        if partition.has_thumbnail:
            thumb_h, thumb_w = partition.thumbnail_size
            thumbnail = torch.zeros(1, 3, size, size)
            thumbnail[:, :, :thumb_h, :thumb_w] = F.interpolate(canvas, size=(thumb_h, thumb_w), mode="bilinear")
            views.append(thumbnail)
        pixel_values = torch.cat(views).contiguous()  # (V, 3, S, S)
        return PreparedImage(pixel_values, "slice", (width, height), slice_views(partition), partition)
