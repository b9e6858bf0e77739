"""Synthetic scenes and their questions: the task of the embedded default model.

A scene is a plain background (light or dark, optionally mild noise) with 1 to 5 filled,
non-overlapping circles, squares and triangles in six colours. Each scene yields questions with exact
answers in a fixed vocabulary (lower case, answer only), so anyone can test the model on their own scenes:

    What color is the {shape}?          -> {color}       (only when exactly one such shape)
    What shape is the {color} object?   -> {shape}       (only when exactly one object has that colour)
    How many objects are there?         -> a digit
    How many {shape}s are there?        -> a digit (0-5)
    Is there a {color} {shape}?         -> yes / no
    Where is the {color} {shape}?       -> the 3x3 cell holding its centre: top left ... bottom right
"""

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
QUESTION_TYPES = ("color", "shape", "count", "count_shape", "exists", "where")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    cx: float  # centre, pixels
    cy: float
    size: float  # side of the bounding square, pixels

    @property
    def box(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


@dataclass
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    noise: float
    objects: list[SceneObject]
    seed: int

    def render_labels(self) -> tuple[Image.Image, Image.Image]:
        """Per-pixel colour index (0 = background, 1..6 in COLORS order) and shape index (0, 1..3 in SHAPES order)."""
        colors = Image.new("L", (self.width, self.height), 0)
        shapes = Image.new("L", (self.width, self.height), 0)
        self._draw(ImageDraw.Draw(colors), lambda o: 1 + list(COLORS).index(o.color))
        self._draw(ImageDraw.Draw(shapes), lambda o: 1 + SHAPES.index(o.shape))
        return colors, shapes

    def _draw(self, draw: ImageDraw.ImageDraw, fill) -> None:
        for obj in self.objects:
            x0, y0, x1, y1 = obj.box
            if obj.shape == "circle":
                draw.ellipse((x0, y0, x1, y1), fill=fill(obj))
            elif obj.shape == "square":
                draw.rectangle((x0, y0, x1, y1), fill=fill(obj))
            else:  # upward triangle filling the box width
                draw.polygon([(obj.cx, y0), (x1, y1), (x0, y1)], fill=fill(obj))

    def render(self) -> Image.Image:
        image = Image.new("RGB", (self.width, self.height), self.background)
        if self.noise:
            rng = np.random.default_rng(self.seed)  # seeded: the same scene renders to the same pixels
            gray = rng.normal(128.0, self.noise, (self.height, self.width)).clip(0, 255).astype(np.uint8)
            noise = Image.fromarray(gray, "L").convert("RGB")
            image = Image.blend(image, noise, 0.08 + 0.04 * rng.random())
        self._draw(ImageDraw.Draw(image), lambda o: COLORS[o.color])
        return image


def cell_name(cx: float, cy: float, width: int, height: int) -> str:
    """The 3x3 cell of the image holding (cx, cy)."""
    row = ROWS[min(2, int(3 * cy / height))]
    column = COLUMNS[min(2, int(3 * cx / width))]
    if row == "middle" and column == "center":
        return "center"
    if row == "middle":
        return f"middle {column}"
    return f"{row} {column}"


def random_scene(rng: random.Random, min_side: int = 224, max_side: int = 1344, min_size: float = 0.02,
                 max_size: float = 0.40, max_objects: int = 5) -> Scene:  # fmt: skip
    """Canvas sides in [min_side, max_side] with aspect ratio within 1:4; object size as a share of the shorter side."""
    while True:
        width, height = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
        if max(width, height) <= 4 * min(width, height):
            break
    light = rng.random() < 0.5
    background = tuple(rng.randint(200, 250) if light else rng.randint(10, 60) for _ in range(3))
    noise = rng.choice([0, 0, 20, 40])
    short = min(width, height)
    objects: list[SceneObject] = []
    target = rng.randint(1, max_objects)
    for _ in range(200 * target):
        if len(objects) == target:
            break
        size = short * math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
        size = max(size, 4.0)
        cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
        candidate = SceneObject(rng.choice(SHAPES), rng.choice(list(COLORS)), cx, cy, size)
        gap = 0.1 * size
        if all(_apart(candidate, other, gap) for other in objects):
            objects.append(candidate)
    return Scene(width, height, background, noise, objects, rng.randrange(2**31))


def _apart(a: SceneObject, b: SceneObject, gap: float) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def questions(scene: Scene) -> list[tuple[str, str, str, SceneObject | None]]:
    """Every answerable (type, question, answer, target object) of the scene."""
    objs = scene.objects
    out = [("count", "How many objects are there?", str(len(objs)), None)]
    for shape in SHAPES:
        same = [o for o in objs if o.shape == shape]
        out.append(("count_shape", f"How many {shape}s are there?", str(len(same)), None))
        if len(same) == 1:
            out.append(("color", f"What color is the {shape}?", same[0].color, same[0]))
    for color in COLORS:
        same = [o for o in objs if o.color == color]
        if len(same) == 1:
            out.append(("shape", f"What shape is the {color} object?", same[0].shape, same[0]))
    for shape in SHAPES:
        for color in COLORS:
            match = [o for o in objs if o.shape == shape and o.color == color]
            out.append(("exists", f"Is there a {color} {shape}?", "yes" if match else "no", match[0] if match else None))
            if len(match) == 1:
                o = match[0]
                out.append(("where", f"Where is the {color} {shape}?", cell_name(o.cx, o.cy, scene.width, scene.height), o))
    return out


def sample_question(scene: Scene, rng: random.Random, kind: str | None = None):
    """One question, its type chosen uniformly among those the scene can answer (yes/no balanced)."""
    available = questions(scene)
    kinds = sorted({q[0] for q in available})
    kind = kind if kind in kinds else rng.choice(kinds)
    pool = [q for q in available if q[0] == kind]
    if kind == "exists":
        answer = rng.choice([a for a in ("yes", "no") if any(q[2] == a for q in pool)])
        pool = [q for q in pool if q[2] == answer]
    return rng.choice(pool)


SPLITS = {
    "standard": dict(min_side=224, max_side=1344, min_size=0.02, max_size=0.40),
    "small": dict(min_side=1008, max_side=1344, min_size=0.02, max_size=0.04),
}
