"""What every synthetic renderer and caption grammar shares: colours, a supersampled canvas, random picks and
phrase joining."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 2  # draw at 2x and downsample with a box filter: soft edges like a photo

IMAGE_SIZES = {
    "cuhk_pedes": (64, 32),
    "flickr30k": (64, 64),
    "mscoco": (64, 64),
    "cub": (64, 64),
    "flowers": (64, 64),
    "icfg_pedes": (64, 32),
    "rstpreid": (64, 32),
}

# ---------------------------------------------------------------------- colours
COLOURS = {
    "red": (200, 30, 35),
    "blue": (35, 70, 190),
    "green": (40, 140, 55),
    "yellow": (230, 205, 40),
    "black": (28, 28, 30),
    "white": (235, 235, 232),
    "grey": (125, 125, 128),
    "purple": (120, 50, 150),
    "orange": (235, 125, 30),
    "pink": (235, 135, 175),
    "brown": (115, 70, 40),
    "navy": (25, 35, 95),
}
CLOTHING_COLOURS = tuple(COLOURS)
COLOUR_WORDS = {  # synonyms an annotator might use
    "grey": ("grey", "gray"),
    "navy": ("navy", "dark blue", "navy blue"),
    "white": ("white",),
    "black": ("black", "dark"),
    "red": ("red",),
    "blue": ("blue", "light blue"),
    "green": ("green",),
    "yellow": ("yellow",),
    "purple": ("purple",),
    "orange": ("orange",),
    "pink": ("pink",),
    "brown": ("brown",),
}


def _colour_word(colour: str, rng: np.random.Generator) -> str:
    words = COLOUR_WORDS.get(colour, (colour,))
    return words[int(rng.integers(len(words)))] if rng.random() < 0.35 else words[0]


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: float = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def _pick(rng: np.random.Generator, options, p=None):
    options = list(options)
    return options[int(rng.choice(len(options), p=p))]


# ---------------------------------------------------------------------- canvas helpers
class Canvas:
    """A PIL drawing surface at ``SUPERSAMPLE`` x the output size, addressed in output pixels."""

    def __init__(self, height: int, width: int, background: tuple[int, int, int]):
        self.height, self.width, self.s = height, width, SUPERSAMPLE
        self.image = Image.new("RGB", (width * self.s, height * self.s), background)
        self.draw = ImageDraw.Draw(self.image)

    def rect(self, x0, y0, x1, y1, colour):
        s = self.s
        self.draw.rectangle([x0 * s, y0 * s, x1 * s - 1, y1 * s - 1], fill=tuple(colour))

    def ellipse(self, cx, cy, rx, ry, colour):
        s = self.s
        self.draw.ellipse([(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=tuple(colour))

    def polygon(self, points, colour):
        self.draw.polygon([(x * self.s, y * self.s) for x, y in points], fill=tuple(colour))

    def line(self, points, colour, width):
        self.draw.line(
            [(x * self.s, y * self.s) for x, y in points], fill=tuple(colour), width=max(1, int(round(width * self.s)))
        )

    def finish(
        self, rng: np.random.Generator, brightness=(0.75, 1.25), tint=0.08, noise=(2.0, 9.0), flip=True
    ) -> np.ndarray:
        """Downsample, then lighting (brightness and colour cast), Gaussian noise, random flip: uint8 (H, W, 3)."""
        small = self.image.resize((self.width, self.height), Image.BOX)
        pixels = np.asarray(small, dtype=np.float32)
        gain = rng.uniform(*brightness) * (1.0 + rng.normal(0.0, tint, size=3))  # (3,)
        pixels = pixels * gain + rng.normal(0.0, rng.uniform(*noise), size=pixels.shape)
        if flip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        return np.clip(pixels, 0, 255).astype(np.uint8)


def _rotated_ellipse(cx, cy, rx, ry, angle, steps=20):
    cos, sin = math.cos(angle), math.sin(angle)
    points = []
    for k in range(steps):
        t = 2 * math.pi * k / steps
        x, y = rx * math.cos(t), ry * math.sin(t)
        points.append((cx + x * cos - y * sin, cy + x * sin + y * cos))
    return points


def _save_image(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=92)
    elif suffix == ".bmp":
        image.save(path, format="BMP")
    else:
        image.save(path, format="PNG", compress_level=1)


def _a(phrase: str) -> str:
    """``phrase`` with its indefinite article: "an orange belly", "a red crown"."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    if len(phrases) == 1:
        return phrases[0]
    conjunction = " and " if rng.random() < 0.8 else ", and "
    return ", ".join(phrases[:-1]) + conjunction + phrases[-1]


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def sample_families(
    count: int, rng: np.random.Generator, sample: Callable, vary: Callable, max_family: int = 4
) -> list:
    """``count`` items in families: a base item and siblings each differing from it in one attribute."""
    items: list = []
    while len(items) < count:
        base = sample(rng)
        items.append(base)
        for _ in range(int(rng.integers(0, max_family))):
            if len(items) < count:
                items.append(vary(base, rng))
    return items
