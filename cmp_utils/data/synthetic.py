"""Synthetic stand-ins for the seven datasets, written to disk in the REAL layouts.

No image of any paper dataset can be obtained here, so the smoke and quick profiles run on
rendered data that ``data.read_dataset`` reads exactly like the real files:

* ``cuhk_pedes``: person-like figures (hair, hat, top with type / colour / pattern, bottom,
  shoes, bag) drawn at 64 x 32 (portrait), 2-4 images per identity varying pose, position,
  scale, background, lighting, occlusion and noise; 2 captions per image from a grammar
  with synonyms, varied order and left-out attributes. Identities come in *families* that
  share all attributes but one, so they are confusable (calibration.md: easy data saturates
  recall within a minute).
* ``flickr30k`` / ``mscoco``: 64 x 64 scenes of 2-4 objects (ball, box, car, house, tree,
  dog, kite, umbrella, person) with colours, sizes and left/right relations on a background
  (grass, beach, snow, street, room), 5 captions per image (some MSCOCO images 6 or 7);
  every image is its own label; scenes too come in families differing in one object.
* ``cub`` / ``flowers``: class-level data, 64 x 64. A class is a kind of bird (crown, wing,
  belly colours, beak, tail, size, wing bars) or flower (petal colour, count and shape,
  centre colour and size, two-tone petals); 10 captions an image; disjoint trainval and
  test classes (zero-shot), test classes being new combinations of seen attributes.

* ``icfg_pedes`` / ``rstpreid`` (published after the paper): the CUHK-PEDES person renderer and
  caption grammar in their own layouts (see the section at the end of this file).

Irregularities of the real files are reproduced: a CUHK image with 10 captions (and one
with 4), mixed ``.png`` / ``.jpg`` / ``.bmp``; MSCOCO images with more than 5 sentences;
blank lines in the CUB / Flowers caption files.

Every generator also writes :data:`GROUND_TRUTH` beside the data (outside the real layout): per
image its attributes (a scene's as :func:`scene_facts`) and what each of its captions states, which
the caption functions record by side effect without drawing from the random generator, so the
data files are the same with or without it (:mod:`cmp_utils.evaluation.ceiling` reads it).

Everything is drawn from ``numpy.random.default_rng([seed, dataset, item])``, so the same
seed writes byte-identical files. :data:`SIZES` holds the sizes per profile (plain data).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 3
MARKER = "synthetic.json"
#: Side file of the generator's ground truth (image attributes, what each caption states), beside
#: the data but outside the real layout; read by :mod:`cmp_utils.evaluation.ceiling`.
GROUND_TRUTH = "synthetic_ground_truth.json"
SUPERSAMPLE = 2  # draw at 2x and downsample with a box filter: soft edges like a photo

IMAGE_SIZES = {"cuhk_pedes": (64, 32), "flickr30k": (64, 64), "mscoco": (64, 64), "cub": (64, 64), "flowers": (64, 64),
               "icfg_pedes": (64, 32), "rstpreid": (64, 32)}

SIZES: dict[str, dict[str, dict[str, int]]] = {
    "smoke": {
        "cuhk_pedes": {"train_ids": 40, "val_ids": 12, "test_ids": 20},
        "flickr30k": {"train": 60, "val": 15, "test": 20},
        "mscoco": {"train": 60, "restval": 15, "val": 15, "test": 20},
        "cub": {"trainval_classes": 10, "test_classes": 5, "images_per_class": 4},
        "flowers": {"trainval_classes": 10, "test_classes": 5, "images_per_class": 4},
        "icfg_pedes": {"train_ids": 50, "test_ids": 20},
        "rstpreid": {"train_ids": 40, "val_ids": 10, "test_ids": 15},
    },
    "quick": {
        # sized for make reproduce's budget (cmp_utils.training: calibration table)
        "cuhk_pedes": {"train_ids": 1000, "val_ids": 100, "test_ids": 300},
        "flickr30k": {"train": 1000, "val": 200, "test": 300},
        "mscoco": {"train": 1000, "restval": 200, "val": 200, "test": 500},
        "cub": {"trainval_classes": 75, "test_classes": 25, "images_per_class": 16},
        "flowers": {"trainval_classes": 45, "test_classes": 15, "images_per_class": 20},
        "icfg_pedes": {"train_ids": 1500, "test_ids": 500},
        "rstpreid": {"train_ids": 1200, "val_ids": 200, "test_ids": 200},
    },
}
SIZES["paper"] = {name: dict(sizes) for name, sizes in SIZES["quick"].items()}  # paper uses real data; forced synthetic = quick
DATASET_CODES = {"cuhk_pedes": 1, "flickr30k": 2, "mscoco": 3, "cub": 4, "flowers": 5, "icfg_pedes": 6, "rstpreid": 7}

# ---------------------------------------------------------------------- colours
COLOURS = {
    "red": (200, 30, 35), "blue": (35, 70, 190), "green": (40, 140, 55), "yellow": (230, 205, 40),
    "black": (28, 28, 30), "white": (235, 235, 232), "grey": (125, 125, 128), "purple": (120, 50, 150),
    "orange": (235, 125, 30), "pink": (235, 135, 175), "brown": (115, 70, 40), "navy": (25, 35, 95),
}
CLOTHING_COLOURS = tuple(COLOURS)
COLOUR_WORDS = {  # synonyms an annotator might use
    "grey": ("grey", "gray"), "navy": ("navy", "dark blue", "navy blue"), "white": ("white",), "black": ("black", "dark"),
    "red": ("red",), "blue": ("blue", "light blue") , "green": ("green",), "yellow": ("yellow",), "purple": ("purple",),
    "orange": ("orange",), "pink": ("pink",), "brown": ("brown",),
}
HAIR_COLOURS = {"black": (20, 18, 18), "brown": (90, 55, 30), "blonde": (215, 185, 110), "grey": (160, 160, 160),
                "red": (150, 50, 25)}
SKIN_TONES = ((235, 200, 170), (210, 165, 125), (165, 115, 80), (110, 75, 50))


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
        self.draw.line([(x * self.s, y * self.s) for x, y in points], fill=tuple(colour), width=max(1, int(round(width * self.s))))

    def finish(self, rng: np.random.Generator, brightness=(0.75, 1.25), tint=0.08, noise=(2.0, 9.0), flip=True) -> np.ndarray:
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


# ====================================================================== CUHK-PEDES-like
PERSON_ATTRIBUTES = ("gender", "hair_colour", "hair_length", "hat", "hat_colour", "top_type", "top_colour", "pattern",
                     "bottom_type", "bottom_colour", "shoes_colour", "bag", "bag_colour")


def sample_person(rng: np.random.Generator) -> dict[str, Any]:
    gender = _pick(rng, ("man", "woman"))
    person = {
        "gender": gender,
        "hair_colour": _pick(rng, HAIR_COLOURS, p=(0.4, 0.3, 0.15, 0.08, 0.07)),
        "hair_length": _pick(rng, ("short", "long"), p=(0.85, 0.15) if gender == "man" else (0.3, 0.7)),
        "hat": _pick(rng, ("none", "cap", "beanie"), p=(0.7, 0.2, 0.1)),
        "hat_colour": _pick(rng, CLOTHING_COLOURS),
        "top_type": _pick(rng, ("t-shirt", "shirt", "jacket", "dress") if gender == "woman" else ("t-shirt", "shirt", "jacket"),
                          p=(0.35, 0.25, 0.25, 0.15) if gender == "woman" else (0.4, 0.3, 0.3)),
        "top_colour": _pick(rng, CLOTHING_COLOURS),
        "pattern": _pick(rng, ("plain", "striped"), p=(0.8, 0.2)),
        "bottom_type": _pick(rng, ("pants", "shorts", "skirt") if gender == "woman" else ("pants", "shorts"),
                             p=(0.5, 0.2, 0.3) if gender == "woman" else (0.75, 0.25)),
        "bottom_colour": _pick(rng, CLOTHING_COLOURS),
        "shoes_colour": _pick(rng, ("black", "white", "brown", "grey", "red", "blue")),
        "bag": _pick(rng, ("none", "backpack", "handbag", "shoulder bag"), p=(0.35, 0.3, 0.15, 0.2)),
        "bag_colour": _pick(rng, ("black", "brown", "red", "blue", "grey", "white", "pink", "green")),
        "skin": int(rng.integers(len(SKIN_TONES))),
    }
    if person["top_type"] == "dress":
        person["bottom_type"] = "none"
    return person


def vary_person(base: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A sibling identity: the same person but for one visible attribute."""
    fresh = sample_person(rng)
    choices = ["top_colour", "bottom_colour", "shoes_colour", "bag", "bag_colour", "hair_colour", "hat", "pattern",
               "top_type", "bottom_colour", "top_colour"]
    for _ in range(10):
        attribute = _pick(rng, choices)
        sibling = dict(base)
        sibling[attribute] = fresh[attribute]
        if attribute == "top_type":
            if base["gender"] == "man" and sibling["top_type"] == "dress":
                continue
            if sibling["top_type"] == "dress":
                sibling["bottom_type"] = "none"
            elif base["top_type"] == "dress":
                sibling["bottom_type"] = fresh["bottom_type"] if fresh["bottom_type"] != "none" else "pants"
        if attribute == "bag_colour" and base["bag"] == "none":
            sibling["bag"] = fresh["bag"] if fresh["bag"] != "none" else "backpack"
        if attribute == "hat" and sibling["hat"] == base["hat"]:
            continue
        if _visible_signature(sibling) != _visible_signature(base):
            return sibling
    return fresh


def visible_attributes(person: dict[str, Any]) -> dict[str, Any]:
    """The attributes a photo of ``person`` shows (:data:`PERSON_ATTRIBUTES`; the colour of an absent
    hat or bag is ``None``)."""
    shown = {attribute: person[attribute] for attribute in PERSON_ATTRIBUTES}
    if shown["bag"] == "none":
        shown["bag_colour"] = None
    if shown["hat"] == "none":
        shown["hat_colour"] = None
    return shown


def _visible_signature(person: dict[str, Any]) -> tuple:
    signature = dict(person)
    if signature["bag"] == "none":
        signature["bag_colour"] = None
    if signature["hat"] == "none":
        signature["hat_colour"] = None
    return tuple(sorted(signature.items()))


def _person_colours(person: dict[str, Any], rng: np.random.Generator) -> dict[str, tuple[int, int, int]]:
    """The identity's own shades (fixed per identity, drawn once)."""
    return {"hair": _jitter(HAIR_COLOURS[person["hair_colour"]], rng, 12), "skin": _jitter(SKIN_TONES[person["skin"]], rng, 8),
            "top": _jitter(COLOURS[person["top_colour"]], rng, 15), "bottom": _jitter(COLOURS[person["bottom_colour"]], rng, 15),
            "shoes": _jitter(COLOURS[person["shoes_colour"]], rng, 12), "bag": _jitter(COLOURS[person["bag_colour"]], rng, 12),
            "hat": _jitter(COLOURS[person["hat_colour"]], rng, 12)}


def render_person(person: dict[str, Any], shades: dict[str, tuple], rng: np.random.Generator,
                  size: tuple[int, int] = IMAGE_SIZES["cuhk_pedes"]) -> np.ndarray:
    """One photo of ``person``: a figure on a cluttered background; uint8 (H, W, 3)."""
    height, width = size
    background = tuple(int(v) for v in rng.integers(120, 235, size=3))
    canvas = Canvas(height, width, background)
    floor = _jitter(tuple(int(v * 0.7) for v in background), rng, 20)
    canvas.rect(0, height * rng.uniform(0.55, 0.8), width, height, floor)
    for _ in range(int(rng.integers(0, 4))):  # clutter: walls, doors, other people's colours
        x0, y0 = rng.uniform(-5, width), rng.uniform(-5, height)
        canvas.rect(x0, y0, x0 + rng.uniform(3, 14), y0 + rng.uniform(4, 30), _pick(rng, COLOURS.values()))
    # figure frame: u in [-0.5, 0.5] across, v in [0, 1] head to toe
    scale = height * rng.uniform(0.78, 0.96)
    top = rng.uniform(1, height - scale - 0.5) if height - scale > 1.5 else 0.5
    centre = width / 2 + rng.uniform(-3, 3)
    unit = scale / 100.0

    def X(u):
        return centre + u * unit

    def Y(v):
        return top + v * unit

    def box(u0, v0, u1, v1, colour):
        canvas.rect(X(u0), Y(v0), X(u1), Y(v1), colour)

    stride = rng.uniform(-6, 6)  # walking pose: feet apart
    arm_swing = rng.uniform(-3, 3)
    skin, top_colour, bottom_colour = shades["skin"], shades["top"], shades["bottom"]
    # backpack seen behind the body (wider than the torso)
    if person["bag"] == "backpack":
        box(-15, 20, 15, 46, shades["bag"])
    # legs
    for side in (-1, 1):
        foot = side * (5 + stride * side * 0.5)
        leg = [(X(side * 1), Y(52)), (X(side * 10), Y(52)), (X(foot + side * 4.5), Y(94)), (X(foot - side * 4.5), Y(94))]
        canvas.polygon(leg, skin)
        if person["bottom_type"] == "pants":
            canvas.polygon(leg, bottom_colour)
        elif person["bottom_type"] == "shorts":
            canvas.polygon([(X(side * 1), Y(52)), (X(side * 11), Y(52)), (X(side * 10.5 + stride * 0.2), Y(68)),
                            (X(side * 1.5), Y(68))], bottom_colour)
        shoe_x = foot
        box(shoe_x - 5.5, 92, shoe_x + 5.5, 99, shades["shoes"])
    if person["bottom_type"] == "skirt":
        canvas.polygon([(X(-10), Y(50)), (X(10), Y(50)), (X(15), Y(74)), (X(-15), Y(74))], bottom_colour)
    if person["top_type"] == "dress":
        canvas.polygon([(X(-11), Y(40)), (X(11), Y(40)), (X(16), Y(76)), (X(-16), Y(76))], top_colour)
    # arms
    sleeve_colour = top_colour
    for side in (-1, 1):
        swing = arm_swing * side
        arm = [(X(side * 12), Y(19)), (X(side * 17.5), Y(20)), (X(side * 18 + swing), Y(52)), (X(side * 13 + swing), Y(52))]
        canvas.polygon(arm, skin)
        if person["top_type"] in ("shirt", "jacket"):
            canvas.polygon(arm, sleeve_colour)
        elif person["top_type"] in ("t-shirt", "dress"):
            canvas.polygon([(X(side * 12), Y(19)), (X(side * 17.5), Y(20)), (X(side * 17.8 + swing * 0.3), Y(31)),
                            (X(side * 12.5 + swing * 0.3), Y(31))], sleeve_colour)
    # torso
    box(-12, 18, 12, 53 if person["top_type"] != "jacket" else 55, top_colour)
    if person["pattern"] == "striped":
        stripe = (235, 235, 235) if sum(top_colour) < 380 else (30, 30, 30)
        for v in range(22, 52, 7):
            box(-12, v, 12, v + 2.5, stripe)
    if person["top_type"] == "jacket":
        box(-2.5, 19, 2.5, 55, _jitter((225, 225, 225) if sum(top_colour) < 300 else (40, 40, 40), rng, 10))
    # bags in front
    if person["bag"] == "backpack":
        for side in (-1, 1):
            box(side * 8 - 1.3, 18, side * 8 + 1.3, 36, shades["bag"])
    elif person["bag"] == "handbag":
        side = _pick(rng, (-1, 1))
        box(side * 14 - 5, 48, side * 14 + 5, 62, shades["bag"])
    elif person["bag"] == "shoulder bag":
        canvas.line([(X(-10), Y(19)), (X(11), Y(45))], shades["bag"], 1.6 * unit)
        box(6, 42, 19, 54, shades["bag"])
    # neck, head, hair, hat
    box(-3.5, 14, 3.5, 19, skin)
    if person["hair_length"] == "long":
        box(-9, 6, 9, 26, shades["hair"])
    canvas.ellipse(X(0), Y(9.5), 7 * unit, 8 * unit, skin)
    canvas.ellipse(X(0), Y(3.6), 7.6 * unit, 4.2 * unit, shades["hair"])
    if person["hat"] == "cap":
        box(-8, 0, 8, 5, shades["hat"])
        box(-2, 3.5, 12, 6, shades["hat"])
    elif person["hat"] == "beanie":
        canvas.ellipse(X(0), Y(3.5), 8.5 * unit, 5.5 * unit, shades["hat"])
    # occlusion: something in front of the person
    if rng.random() < 0.2:
        occluder = _pick(rng, COLOURS.values())
        if rng.random() < 0.5:
            canvas.rect(0, Y(rng.uniform(55, 80)), width, height, occluder)
        else:
            x0 = rng.uniform(-4, width - 6)
            canvas.rect(x0, 0, x0 + rng.uniform(4, 9), height, occluder)
    return canvas.finish(rng)


GENDER_WORDS = frozenset({"she", "her", "he", "his", "woman", "lady", "girl", "female", "man", "guy", "male",
                          "gentleman"})


def person_caption(person: dict[str, Any], rng: np.random.Generator, mentions: dict[str, str] | None = None) -> str:
    """One annotator's description: synonyms, shuffled order, some attributes left out.

    ``mentions``, when given, is filled with the attributes the caption states and their values
    (``{"top_colour": "red", "bag": "backpack", ...}``): the ground truth of the ceiling
    (:mod:`cmp_utils.evaluation.ceiling`). It draws nothing from ``rng``, so the caption is the same either way.
    """
    woman = person["gender"] == "woman"
    pronoun, possessive = ("she", "her") if woman else ("he", "his")
    noun = _pick(rng, ("woman", "lady", "girl", "female", "person") if woman else ("man", "guy", "male", "person", "gentleman"))
    word = lambda key: _colour_word(person[key], rng)  # noqa: E731
    phrases: dict[str, str] = {}
    top_nouns = {"t-shirt": ("t-shirt", "tee shirt", "short sleeved shirt", "shirt"),
                 "shirt": ("long sleeved shirt", "shirt with long sleeves", "sweater", "top"),
                 "jacket": ("jacket", "coat", "zip up jacket"), "dress": ("dress", "short dress")}
    top_noun = _pick(rng, top_nouns[person["top_type"]])
    pattern = "striped " if person["pattern"] == "striped" and rng.random() < 0.85 else ""
    phrases["top"] = _a(f"{word('top_colour')} {pattern}{top_noun}")
    if person["bottom_type"] != "none":
        bottom_nouns = {"pants": ("pants", "trousers", "jeans", "slacks"), "shorts": ("shorts", "short pants"),
                        "skirt": ("skirt", "knee length skirt")}
        article = "a " if person["bottom_type"] == "skirt" else ""
        bottom = f"{word('bottom_colour')} {_pick(rng, bottom_nouns[person['bottom_type']])}"
        phrases["bottom"] = _a(bottom) if article else bottom
    phrases["shoes"] = f"{word('shoes_colour')} {_pick(rng, ('shoes', 'sneakers', 'boots', 'shoes'))}"
    if person["hat"] != "none":
        hat_noun = "cap" if person["hat"] == "cap" else _pick(rng, ("beanie", "knit hat", "hat"))
        phrases["hat"] = _a(f"{word('hat_colour')} {hat_noun}")
    hair = f"{person['hair_length']} {person['hair_colour']} hair" if rng.random() < 0.6 else f"{person['hair_colour']} hair"
    bag = None
    if person["bag"] != "none":
        bag_noun = {"backpack": ("backpack", "back pack", "bag on " + possessive + " back"),
                    "handbag": ("handbag", "purse", "hand bag"), "shoulder bag": ("shoulder bag", "bag over "
                                                                                 + possessive + " shoulder", "messenger bag")}
        bag = f"{_pick(rng, ('carrying', 'holding', 'with', 'has'))} {_a(word('bag_colour') + ' ' + _pick(rng, bag_noun[person['bag']]))}"
    # leave attributes out: annotators mention what they notice
    clothing = [key for key in ("top", "bottom", "shoes", "hat") if key in phrases]
    kept = [key for key in clothing if rng.random() < (0.92 if key == "top" else 0.7)]
    if not kept:
        kept = [_pick(rng, clothing)]
    rng.shuffle(kept)
    wear = _pick(rng, ("wearing", "dressed in", "in", "who is wearing", "wears"))
    opening = _pick(rng, (_a(noun), f"the {noun}", f"this {noun}", f"a young {noun}")
                    + ((f"an adult {noun}",) if noun not in ("girl", "guy") else ()))
    clothes = _join([phrases[k] for k in kept], rng)
    parts = []
    style = int(rng.integers(4))
    mention_hair = rng.random() < 0.45
    if style == 0:
        parts.append(f"{opening} {wear} {clothes}")
        if mention_hair:
            parts.append(f". {pronoun} has {hair}")
    elif style == 1:
        parts.append(f"{opening} with {hair} {wear} {clothes}" if mention_hair else f"{opening} {wear} {clothes}")
    elif style == 2:
        parts.append(f"{opening} is walking {_pick(rng, ('and is', 'while'))} wearing {clothes}")
        if mention_hair:
            parts.append(f". {possessive} hair is {person['hair_colour']}")
    else:
        parts.append(f"{pronoun} is wearing {clothes}" if rng.random() < 0.5 else f"{opening} has on {clothes}")
        if mention_hair:
            parts.append(f" and has {hair}")
    bag_stated = bag is not None and rng.random() < 0.75
    if bag_stated:
        parts.append(_pick(rng, (f". {pronoun} is {bag.replace('has ', 'carrying ').replace('with ', 'carrying ')}",
                                 f", {bag.replace('has ', 'with ')}")))
    text = "".join(parts)
    caption = ". ".join(_sentence(s.strip()).rstrip(".") for s in text.split(". ") if s.strip()) + "."
    if mentions is not None:
        mentions.clear()
        stated = {"top": ("top_type", "top_colour"), "bottom": ("bottom_type", "bottom_colour"),
                  "shoes": ("shoes_colour",), "hat": ("hat", "hat_colour")}
        for key in kept:
            mentions.update({attribute: person[attribute] for attribute in stated[key]})
        if "top" in kept and pattern:
            mentions["pattern"] = person["pattern"]
        if mention_hair:
            mentions["hair_colour"] = person["hair_colour"]
            if style != 2 and hair.startswith(person["hair_length"]):
                mentions["hair_length"] = person["hair_length"]
        if bag_stated:
            mentions.update(bag=person["bag"], bag_colour=person["bag_colour"])
        if GENDER_WORDS & set(caption.lower().replace(".", " ").replace(",", " ").split()):
            mentions["gender"] = person["gender"]
    return caption


def sample_families(count: int, rng: np.random.Generator, sample: Callable, vary: Callable, max_family: int = 4) -> list:
    """``count`` items in families: a base item and siblings each differing from it in one attribute."""
    items: list = []
    while len(items) < count:
        base = sample(rng)
        items.append(base)
        for _ in range(int(rng.integers(0, max_family))):
            if len(items) < count:
                items.append(vary(base, rng))
    return items


CUHK_FOLDERS = (("CUHK01", ".png"), ("CUHK03", ".png"), ("Market", ".jpg"), ("train_query", ".jpg"),
                ("test_query", ".jpg"), ("cam_a", ".bmp"), ("cam_b", ".bmp"))


def _generate_cuhk(root: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, DATASET_CODES["cuhk_pedes"]])
    records = []
    next_id = 1
    persons: dict[int, dict[str, Any]] = {}
    stats: dict[str, Any] = {}
    truth: list[dict[str, Any]] = []  # per image: its attributes and what each of its captions states
    for split in ("train", "val", "test"):
        identities = sample_families(sizes[f"{split}_ids"], rng, sample_person, vary_person)
        images = 0
        for person in identities:
            person_id = next_id
            next_id += 1
            persons[person_id] = person
            item_rng = np.random.default_rng([seed, DATASET_CODES["cuhk_pedes"], person_id])
            shades = _person_colours(person, item_rng)
            folder, extension = CUHK_FOLDERS[int(item_rng.integers(len(CUHK_FOLDERS)))]
            for view in range(int(item_rng.integers(2, 5))):
                file_path = f"{folder}/{person_id:05d}_{view}{extension}"
                _save_image(render_person(person, shades, item_rng), root / "imgs" / file_path)
                caption_mentions = [{}, {}]
                captions = [person_caption(person, item_rng, said) for said in caption_mentions]
                records.append({"split": split, "captions": captions, "file_path": file_path,
                                "processed_tokens": [], "id": person_id})
                truth.append({"split": split, "file_path": file_path, "id": person_id,
                              "attributes": visible_attributes(person), "mentions": caption_mentions})
                images += 1
        stats[split] = {"ids": len(identities), "images": images}
    # irregularities of the real file: one test image with 10 captions, one val image with 4
    for split, count in (("test", 10), ("val", 4)):
        record = next(r for r in records if r["split"] == split)
        person_rng = np.random.default_rng([seed, DATASET_CODES["cuhk_pedes"], record["id"], count])
        person = persons[record["id"]]
        extra_mentions = [{} for _ in range(count - 2)]
        record["captions"] = record["captions"] + [person_caption(person, person_rng, said) for said in extra_mentions]
        next(t for t in truth if t["file_path"] == record["file_path"])["mentions"].extend(extra_mentions)
    _write_json(root / GROUND_TRUTH, truth)
    for split in stats:  # captions per split, after the irregularities (read by recorded_sizes)
        stats[split]["captions"] = sum(len(record["captions"]) for record in records if record["split"] == split)
    from .text import tokenize

    for record in records:
        record["processed_tokens"] = [tokenize(c) for c in record["captions"]]
    _write_json(root / "reid_raw.json", records)
    return stats


def _write_json(path: Path, payload: Any) -> None:
    from ..core.atomic import write_text

    write_text(path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


# ====================================================================== Flickr30K / MSCOCO-like scenes
BACKGROUNDS = {  # name: (sky colour, ground colour, phrases)
    "grass": ((140, 185, 235), (70, 150, 60), ("on the grass", "in a grassy field", "in a park", "on a lawn")),
    "beach": ((120, 175, 235), (225, 205, 150), ("on the beach", "on the sand", "by the sea")),
    "snow": ((180, 190, 205), (240, 242, 245), ("in the snow", "on a snowy field", "in winter")),
    "street": ((165, 180, 200), (95, 95, 100), ("on the street", "on a road", "in the city")),
    "room": ((215, 200, 170), (140, 95, 60), ("in a room", "indoors", "inside a house")),
}
SCENE_KINDS = ("ball", "box", "car", "house", "tree", "dog", "kite", "umbrella", "person")
KIND_COLOURS = {"tree": ("green", "orange", "yellow"), "dog": ("brown", "black", "white", "grey"),
                "house": ("white", "red", "yellow", "blue", "brown", "grey")}
KIND_WORDS = {"ball": ("ball",), "box": ("box", "crate", "cube"), "car": ("car", "vehicle", "automobile"),
              "house": ("house", "building", "home"), "tree": ("tree",), "dog": ("dog", "puppy"), "kite": ("kite",),
              "umbrella": ("umbrella", "parasol"), "person": ("person", "man", "child")}
SCENE_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "grey", "purple", "orange", "pink", "brown")


def _sample_object(rng: np.random.Generator, exclude: tuple = ()) -> dict[str, Any]:
    kind = _pick(rng, [k for k in SCENE_KINDS if k not in exclude])
    return {"kind": kind, "colour": _pick(rng, KIND_COLOURS.get(kind, SCENE_COLOURS)),
            "size": _pick(rng, ("small", "large"))}


def sample_scene(rng: np.random.Generator) -> dict[str, Any]:
    """A random scene: two to four objects with their attributes and positions."""
    count = int(rng.integers(2, 5))
    objects = []
    for _ in range(count):
        exclude = ("kite",) if any(o["kind"] == "kite" for o in objects) else ()
        objects.append(_sample_object(rng, exclude))
    return {"background": _pick(rng, BACKGROUNDS), "objects": objects}


def _vary_scene(base: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    scene = {"background": base["background"], "objects": [dict(o) for o in base["objects"]]}
    change = _pick(rng, ("colour", "colour", "kind", "size", "background"))
    index = int(rng.integers(len(scene["objects"])))
    target = scene["objects"][index]
    if change == "background":
        scene["background"] = _pick(rng, [b for b in BACKGROUNDS if b != base["background"]])
    elif change == "colour":
        target["colour"] = _pick(rng, [c for c in KIND_COLOURS.get(target["kind"], SCENE_COLOURS) if c != target["colour"]])
    elif change == "size":
        target["size"] = "small" if target["size"] == "large" else "large"
    else:
        others = tuple(o["kind"] for i, o in enumerate(scene["objects"]) if i != index and o["kind"] == "kite")
        scene["objects"][index] = _sample_object(rng, exclude=others + (target["kind"],))
    return scene


def _draw_object(canvas: Canvas, obj: dict[str, Any], x: float, ground: float, rng: np.random.Generator) -> None:
    s = (1.0 if obj["size"] == "large" else 0.58) * rng.uniform(0.9, 1.1)
    colour = _jitter(COLOURS[obj["colour"]], rng, 14)
    kind = obj["kind"]
    if kind == "ball":
        r = 6 * s
        canvas.ellipse(x, ground - r, r, r, colour)
    elif kind == "box":
        w = 12 * s
        canvas.rect(x - w / 2, ground - w, x + w / 2, ground, colour)
        canvas.line([(x - w / 2, ground - w), (x + w / 2, ground)], _jitter((60, 60, 60), rng, 10), 0.6)
    elif kind == "car":
        w, h = 22 * s, 7 * s
        canvas.rect(x - w / 2, ground - h - 2.5 * s, x + w / 2, ground - 2.5 * s, colour)
        canvas.rect(x - w / 4, ground - h - 7 * s, x + w / 4, ground - h - 2.5 * s, colour)
        canvas.rect(x - w / 4 + 1.2 * s, ground - h - 6 * s, x + w / 4 - 1.2 * s, ground - h - 2.8 * s, (180, 210, 230))
        for dx in (-w / 3, w / 3):
            canvas.ellipse(x + dx, ground - 2.5 * s, 3 * s, 3 * s, (25, 25, 25))
    elif kind == "house":
        w = 20 * s
        canvas.rect(x - w / 2, ground - w * 0.8, x + w / 2, ground, colour)
        canvas.polygon([(x - w * 0.62, ground - w * 0.8), (x + w * 0.62, ground - w * 0.8), (x, ground - w * 1.35)],
                       _jitter((120, 40, 30), rng, 15))
        canvas.rect(x - w * 0.12, ground - w * 0.4, x + w * 0.12, ground, (70, 45, 30))
    elif kind == "tree":
        canvas.rect(x - 1.8 * s, ground - 16 * s, x + 1.8 * s, ground, (95, 60, 35))
        canvas.ellipse(x, ground - 20 * s, 9 * s, 10 * s, colour)
    elif kind == "dog":
        canvas.ellipse(x, ground - 7 * s, 8 * s, 4 * s, colour)
        canvas.ellipse(x + 8 * s, ground - 11 * s, 3.6 * s, 3.4 * s, colour)
        for dx in (-5, -2, 3, 6):
            canvas.rect(x + dx * s - 0.8 * s, ground - 5 * s, x + dx * s + 0.8 * s, ground, colour)
        canvas.line([(x - 8 * s, ground - 8 * s), (x - 11 * s, ground - 12 * s)], colour, 1.3 * s)
    elif kind == "kite":
        y = ground * rng.uniform(0.25, 0.45)
        canvas.polygon([(x, y - 7 * s), (x + 5 * s, y), (x, y + 7 * s), (x - 5 * s, y)], colour)
        canvas.line([(x, y + 7 * s), (x - 4, ground - 2)], (60, 60, 60), 0.5)
    elif kind == "umbrella":
        canvas.line([(x, ground - 14 * s), (x, ground)], (60, 60, 60), 1.0 * s)
        canvas.draw.pieslice([(x - 11 * s) * canvas.s, (ground - 22 * s) * canvas.s, (x + 11 * s) * canvas.s,
                              (ground - 6 * s) * canvas.s], 180, 360, fill=tuple(colour))
    elif kind == "person":
        canvas.ellipse(x, ground - 21 * s, 2.8 * s, 3 * s, _jitter(SKIN_TONES[int(rng.integers(4))], rng, 8))
        canvas.rect(x - 3.5 * s, ground - 18 * s, x + 3.5 * s, ground - 9 * s, colour)
        canvas.rect(x - 3 * s, ground - 9 * s, x + 3 * s, ground, _jitter((45, 50, 80), rng, 15))


def render_scene(scene: dict[str, Any], rng: np.random.Generator, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Objects left to right on the scene's background: uint8 (H, W, 3) (not flipped: captions say left/right)."""
    height, width = size
    sky, ground_colour, _ = BACKGROUNDS[scene["background"]]
    canvas = Canvas(height, width, _jitter(sky, rng, 12))
    horizon = height * rng.uniform(0.4, 0.6)
    canvas.rect(0, horizon, width, height, _jitter(ground_colour, rng, 12))
    for _ in range(int(rng.integers(0, 3))):  # texture patches on the ground
        x0, y0 = rng.uniform(0, width), rng.uniform(horizon, height)
        canvas.ellipse(x0, y0, rng.uniform(2, 8), rng.uniform(1, 3), _jitter(ground_colour, rng, 30))
    objects = scene["objects"]
    slots = np.linspace(width * 0.16, width * 0.84, len(objects)) + rng.uniform(-3, 3, size=len(objects))
    depth = rng.uniform(horizon + 6, height - 3, size=len(objects))  # ground line of each object
    for index in np.argsort(depth):  # far objects first
        _draw_object(canvas, objects[index], float(slots[index]), float(depth[index]), rng)
    return canvas.finish(rng, brightness=(0.8, 1.2), noise=(1.5, 6.0), flip=False)


def object_description(obj: dict[str, Any], size: bool = True, colour: bool = True) -> str:
    """Canonical text of what a phrase says about ``obj``: ``"[size] [colour] kind"`` (ground truth, not a caption)."""
    return " ".join(w for w in (obj["size"] if size else None, obj["colour"] if colour else None, obj["kind"]) if w)


def scene_facts(scene: dict[str, Any]) -> dict[str, Any]:
    """Everything a caption of ``scene`` could state, as ``{fact: value}`` (the scene's attributes for
    :mod:`cmp_utils.evaluation.ceiling`): the background; ``"object: <description> #j"`` for the j-th object fitting a
    description (every combination of size and colour said or not); ``"left of: <a> | <b>"`` for objects in that
    order; ``"on the left: <a>"`` / ``"on the right: <a>"`` / ``"in the middle: <a>"`` by position."""
    objects = scene["objects"]
    descriptions = [[object_description(o, size, colour) for size in (False, True) for colour in (False, True)]
                    for o in objects]
    facts: dict[str, Any] = {"background": scene["background"]}
    counts: dict[str, int] = {}
    for index, options in enumerate(descriptions):
        position = "on the left" if index == 0 else "on the right" if index == len(objects) - 1 else "in the middle"
        for description in options:
            counts[description] = counts.get(description, 0) + 1
            facts[f"object: {description} #{counts[description]}"] = True
            facts[f"{position}: {description}"] = True
        for right in descriptions[index + 1:]:
            facts.update({f"left of: {a} | {b}": True for a in options for b in right})
    return facts


def _object_phrase(obj: dict[str, Any], rng: np.random.Generator, detail: float = 0.8,
                   said: list[str] | None = None) -> str:
    """A noun phrase for ``obj``; ``said``, when given, gets :func:`object_description` of what it states
    (drawn from nothing: the phrase is the same either way)."""
    words = []
    sized = rng.random() < 0.45
    if sized:
        words.append(_pick(rng, ("small", "little", "tiny")) if obj["size"] == "small" else _pick(rng, ("large", "big")))
    colour = _colour_word(obj["colour"], rng) if rng.random() < detail else None
    if said is not None:
        said.append(object_description(obj, sized, colour is not None))
    if obj["kind"] == "person":  # a person's colour is the shirt's
        words.append(_pick(rng, KIND_WORDS["person"]))
        if colour:
            words.append(f"in {_a(colour + ' ' + _pick(rng, ('shirt', 'top', 'sweater')))}")
    else:
        words.extend(([colour] if colour else []) + [_pick(rng, KIND_WORDS[obj["kind"]])])
    return _a(" ".join(words))


def scene_caption(scene: dict[str, Any], rng: np.random.Generator, mentions: dict[str, Any] | None = None) -> str:
    """One annotator's sentence about ``scene``. ``mentions``, when given, is filled with the facts it
    states, in the vocabulary of :func:`scene_facts` (drawn from nothing: the caption is the same either way)."""
    objects = scene["objects"]
    where = _pick(rng, BACKGROUNDS[scene["background"]][2])
    order = list(range(len(objects)))
    style = int(rng.integers(4))
    said: list[str] = []  # descriptions of the objects the caption names, in order
    facts: dict[str, Any] = {}
    say_where = True
    if style == 0 and len(objects) >= 2:
        i, j = sorted(rng.choice(len(objects), size=2, replace=False))
        left, right = _object_phrase(objects[i], rng, said=said), _object_phrase(objects[j], rng, said=said)
        relation = _pick(rng, ("to the left of", "left of", "beside", "next to", "near"))
        if rng.random() < 0.5 and relation in ("to the left of", "left of"):
            text = f"{right} to the right of {left}"
        else:
            text = f"{left} {relation} {right}"
        if relation in ("to the left of", "left of"):
            facts[f"left of: {said[0]} | {said[1]}"] = True
        say_where = rng.random() < 0.6
        if say_where:
            text += f" {where}"
    elif style == 1:
        kept = [k for k in order if rng.random() < 0.75] or [order[0]]
        text = f"there is {_join([_object_phrase(objects[k], rng, said=said) for k in kept], rng)} {where}"
    elif style == 2:
        kept = [k for k in order if rng.random() < 0.7] or [order[-1]]
        rng.shuffle(kept)
        text = f"{where} {_pick(rng, ('we see', 'there are', 'you can see'))} {_join([_object_phrase(objects[k], rng, said=said) for k in kept], rng)}"
    else:
        k = int(rng.integers(len(objects)))
        position = ("on the left" if k == 0 else "on the right" if k == len(objects) - 1 else "in the middle")
        text = f"{_object_phrase(objects[k], rng, 0.95, said)} {position}"
        facts[f"{position}: {said[0]}"] = True
        others = [o for o in order if o != k and rng.random() < 0.6]
        if others:
            text += f" with {_join([_object_phrase(objects[o], rng, 0.6, said) for o in others], rng)}"
        say_where = rng.random() < 0.5
        text += f" {where}" if say_where else ""
    if mentions is not None:
        mentions.clear()
        if say_where:
            mentions["background"] = scene["background"]
        for index, description in enumerate(said):
            mentions[f"object: {description} #{said[: index + 1].count(description)}"] = True
        mentions.update(facts)
    return _sentence(text)


def _generate_karpathy(name: str, root: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, DATASET_CODES[name]])
    splits = ("train", "restval", "val", "test") if name == "mscoco" else ("train", "val", "test")
    images, stats = [], {}
    truth: list[dict[str, Any]] = []  # per image: its facts and what each of its captions states
    sentence_id = 0
    from .text import tokenize

    for split in splits:
        scenes = sample_families(sizes[split], rng, sample_scene, _vary_scene, max_family=3)
        for scene in scenes:
            image_id = len(images)
            item_rng = np.random.default_rng([seed, DATASET_CODES[name], image_id])
            if name == "mscoco":
                folder = "train2014" if split == "train" else "val2014"
                coco_id = 100000 + image_id * 7
                filename = f"COCO_{folder}_{coco_id:012d}.jpg"
                path = root / folder / filename
            else:
                filename = f"{1000000 + image_id * 13}.jpg"
                path = root / "flickr30k-images" / filename
            _save_image(render_scene(scene, item_rng), path)
            count = 5
            if name == "mscoco" and item_rng.random() < 0.08:
                count = int(item_rng.integers(6, 8))
            sentences, caption_mentions = [], [{} for _ in range(count)]
            for said in caption_mentions:
                raw = scene_caption(scene, item_rng, said)
                sentences.append({"tokens": tokenize(raw), "raw": raw, "imgid": image_id, "sentid": sentence_id})
                sentence_id += 1
            record = {"filename": filename, "imgid": image_id, "split": split,
                      "sentids": [s["sentid"] for s in sentences], "sentences": sentences}
            if name == "mscoco":
                record = {"filepath": folder, **record, "cocoid": coco_id}
            images.append(record)
            truth.append({"split": split, "file_path": filename, "id": image_id, "attributes": scene_facts(scene),
                          "mentions": caption_mentions})
        stats[split] = {"images": len(scenes), "captions": sum(len(r["sentences"]) for r in images if r["split"] == split)}
    _write_json(root / ("dataset_coco.json" if name == "mscoco" else "dataset_flickr30k.json"),
                {"images": images, "dataset": "coco" if name == "mscoco" else "flickr30k"})
    _write_json(root / GROUND_TRUTH, truth)
    return stats


# ====================================================================== CUB-like birds
BIRD_COLOURS = ("red", "blue", "yellow", "black", "white", "grey", "brown", "orange", "green")


def sample_bird(rng: np.random.Generator) -> dict[str, Any]:
    """A random bird: the colour or shape of each of its parts."""
    return {"crown": _pick(rng, BIRD_COLOURS), "body": _pick(rng, BIRD_COLOURS), "wing": _pick(rng, BIRD_COLOURS),
            "belly": _pick(rng, BIRD_COLOURS), "beak": _pick(rng, ("short", "long", "hooked")),
            "beak_colour": _pick(rng, ("black", "orange", "yellow", "grey")), "tail": _pick(rng, ("short", "long")),
            "wing_bars": bool(rng.random() < 0.35), "size": _pick(rng, ("small", "large"))}


def _vary_bird(base: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    fresh = sample_bird(rng)
    for _ in range(10):
        key = _pick(rng, ("crown", "body", "wing", "belly", "beak", "beak_colour", "tail", "wing_bars", "size"))
        if fresh[key] != base[key]:
            return {**base, key: fresh[key]}
    return fresh


def render_bird(bird: dict[str, Any], rng: np.random.Generator, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    height, width = size
    sky = rng.random() < 0.5
    background = _jitter((150, 190, 230) if sky else (70, 120, 60), rng, 25)
    canvas = Canvas(height, width, background)
    for _ in range(int(rng.integers(2, 6))):  # foliage / clouds
        canvas.ellipse(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(4, 14), rng.uniform(3, 9),
                       _jitter(background, rng, 25))
    s = (1.0 if bird["size"] == "large" else 0.75) * rng.uniform(0.85, 1.1)
    cx, cy = width / 2 + rng.uniform(-6, 6), height / 2 + rng.uniform(-5, 3)
    tilt = rng.uniform(-0.45, 0.15)
    cos, sin = math.cos(tilt), math.sin(tilt)

    def P(u, v):  # bird frame: u forward (right), v down
        return (cx + (u * cos - v * sin) * s, cy + (u * sin + v * cos) * s)

    branch_y = cy + 13 * s
    canvas.line([(0, branch_y + rng.uniform(-3, 3)), (width, branch_y + rng.uniform(-3, 3))], _jitter((100, 70, 40), rng, 12), 2.2)
    colour = {k: _jitter(COLOURS[bird[k]], rng, 12) for k in ("crown", "body", "wing", "belly", "beak_colour")}
    tail_length = 16 if bird["tail"] == "long" else 9
    canvas.polygon([P(-10, -2), P(-10, 3), P(-10 - tail_length, 6), P(-10 - tail_length, 1)], colour["wing"])
    for du in (-2, 3):
        canvas.line([P(du, 7), (P(du, 7)[0], branch_y)], (60, 50, 40), 0.8)
    canvas.polygon(_rotated_ellipse(*P(0, 0), 13 * s, 8 * s, tilt), colour["body"])
    canvas.polygon(_rotated_ellipse(*P(2, 3.5), 10 * s, 4.8 * s, tilt), colour["belly"])
    canvas.polygon(_rotated_ellipse(*P(-3, -1.5), 9 * s, 4.5 * s, tilt - 0.15), colour["wing"])
    if bird["wing_bars"]:
        for du in (-6, -2):
            canvas.line([P(du, -4), P(du - 1, 1)], (240, 240, 240), 1.0)
    head = P(11, -8)
    canvas.ellipse(head[0], head[1], 6 * s, 6 * s, colour["body"])
    canvas.draw.pieslice([(head[0] - 6 * s) * canvas.s, (head[1] - 6 * s) * canvas.s, (head[0] + 6 * s) * canvas.s,
                          (head[1] + 6 * s) * canvas.s], 180, 360, fill=tuple(colour["crown"]))
    beak = {"short": 5, "long": 10, "hooked": 6}[bird["beak"]]
    tip = P(16 + beak, -6 if bird["beak"] != "hooked" else -3)
    canvas.polygon([P(15.5, -9.5), tip, P(15.5, -5.5)], colour["beak_colour"])
    eye = P(13, -9)
    canvas.ellipse(eye[0], eye[1], 1.3, 1.3, (15, 15, 15))
    return canvas.finish(rng, brightness=(0.8, 1.2), noise=(1.5, 6.0))


def bird_caption(bird: dict[str, Any], rng: np.random.Generator, mentions: dict[str, Any] | None = None) -> str:
    """One annotator's sentence about a bird class. ``mentions``, when given, is filled with the attributes
    it states (drawn from nothing: the caption is the same either way); absent wing bars are never stated."""
    c = lambda key: _colour_word(bird[key], rng)  # noqa: E731
    pool = [_a(f"{c('crown')} crown"), f"{c('wing')} wings" + (" with white wing bars" if bird["wing_bars"] else ""),
            _a(f"{c('belly')} belly")]
    beak_coloured = rng.random() < 0.6
    pool += [_a(f"{bird['beak']} {c('beak_colour')} beak") if beak_coloured else _a(f"{bird['beak']} beak"),
             _a(f"{bird['tail']} tail"), _a(f"{c('body')} body")]
    stated = [("crown",), ("wing", "wing_bars") if bird["wing_bars"] else ("wing",), ("belly",),
              ("beak", "beak_colour") if beak_coloured else ("beak",), ("tail",), ("body",)]
    if bird["wing_bars"] and rng.random() < 0.5:
        pool.append("wingbars")
        stated.append(("wing_bars",))
    keep = [index for index in range(len(pool)) if rng.random() < 0.5] or [int(rng.integers(len(pool)))]
    kept = [pool[index] for index in keep]
    rng.shuffle(kept)
    size_word = _pick(rng, ("small", "little", "tiny")) if bird["size"] == "small" else _pick(rng, ("large", "big", "medium sized"))
    style = int(rng.integers(4))
    if mentions is not None:
        mentions.clear()
        mentions.update({key: bird[key] for index in keep for key in stated[index]})
        if style in (2, 3):
            mentions["body"] = bird["body"]
        if style in (1, 3):
            mentions["size"] = bird["size"]
    if style == 0:
        text = f"this bird has {_join(kept, rng)}"
    elif style == 1:
        text = f"{_a(size_word)} bird with {_join(kept, rng)}"
    elif style == 2:
        text = f"this {c('body')} bird has {_join(kept, rng)}"
    else:
        text = f"the bird is {size_word} and {c('body')} with {_join(kept, rng)}"
    return text + ("" if rng.random() < 0.5 else ".")


# ====================================================================== Flowers-like
PETAL_COLOURS = ("red", "pink", "purple", "white", "yellow", "orange", "blue")
COUNT_WORDS = {4: "four", 5: "five", 6: "six", 8: "eight", 12: "many"}


def sample_flower(rng: np.random.Generator) -> dict[str, Any]:
    """A random flower: petal colour, count and shape, and its other parts."""
    return {"petal": _pick(rng, PETAL_COLOURS), "count": _pick(rng, COUNT_WORDS),
            "shape": _pick(rng, ("round", "pointed", "long thin")),
            "centre": _pick(rng, ("yellow", "brown", "black", "green", "white", "orange")),
            "centre_size": _pick(rng, ("small", "large")), "tips": _pick(rng, ("none", "none", "white", "yellow", "purple")),
            "double": bool(rng.random() < 0.3)}


def _vary_flower(base: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    fresh = sample_flower(rng)
    for _ in range(10):
        key = _pick(rng, tuple(base))
        if fresh[key] != base[key]:
            return {**base, key: fresh[key]}
    return fresh


def render_flower(flower: dict[str, Any], rng: np.random.Generator, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    height, width = size
    background = _jitter(_pick(rng, ((50, 95, 45), (30, 55, 30), (110, 140, 80), (90, 80, 60))), rng, 18)
    canvas = Canvas(height, width, background)
    for _ in range(int(rng.integers(3, 8))):
        canvas.ellipse(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, 10), rng.uniform(2, 6),
                       _jitter(background, rng, 30))
    cx, cy = width / 2 + rng.uniform(-7, 7), height / 2 + rng.uniform(-7, 7)
    s = rng.uniform(0.75, 1.1)
    canvas.line([(cx, cy), (cx + rng.uniform(-8, 8), height)], _jitter((60, 130, 50), rng, 15), 2.0)
    petal_colour, centre_colour = _jitter(COLOURS[flower["petal"]], rng, 14), _jitter(COLOURS[flower["centre"]], rng, 12)
    length, breadth = {"round": (11, 6.5), "pointed": (14, 4.5), "long thin": (19, 2.6)}[flower["shape"]]
    start = rng.uniform(0, 2 * math.pi)
    layers = [(1.0, 0.0)] + ([(0.65, math.pi / flower["count"])] if flower["double"] else [])
    for scale_factor, offset in layers:
        for k in range(flower["count"]):
            angle = start + offset + 2 * math.pi * k / flower["count"]
            reach = length * s * scale_factor
            px, py = cx + math.cos(angle) * reach * 0.6, cy + math.sin(angle) * reach * 0.6
            canvas.polygon(_rotated_ellipse(px, py, reach * 0.6, breadth * s * scale_factor, angle, 16), petal_colour)
            if flower["tips"] != "none" and scale_factor == 1.0:
                tx, ty = cx + math.cos(angle) * reach * 1.0, cy + math.sin(angle) * reach * 1.0
                canvas.polygon(_rotated_ellipse(tx, ty, reach * 0.22, breadth * s * 0.7, angle, 12),
                               _jitter(COLOURS[flower["tips"]], rng, 10))
    radius = (5.5 if flower["centre_size"] == "large" else 3.0) * s
    canvas.ellipse(cx, cy, radius, radius, centre_colour)
    return canvas.finish(rng, brightness=(0.8, 1.2), noise=(1.5, 6.0))


def flower_caption(flower: dict[str, Any], rng: np.random.Generator, mentions: dict[str, Any] | None = None) -> str:
    """One annotator's sentence about a flower class. ``mentions``, when given, is filled with the attributes
    it states (drawn from nothing: the caption is the same either way); absent tips or layers are never stated."""
    petal = _colour_word(flower["petal"], rng)
    shape = flower["shape"] if rng.random() < 0.7 else ""
    count = COUNT_WORDS[flower["count"]] if rng.random() < 0.5 else ""
    centre_noun = _pick(rng, ("center", "centre", "stamen", "pistil"))
    centre_sized = rng.random() < 0.5
    centre = _a(f"{flower['centre_size'] + ' ' if centre_sized else ''}{_colour_word(flower['centre'], rng)} {centre_noun}")
    extras = []
    said = {"petal": flower["petal"]}
    if flower["tips"] != "none" and rng.random() < 0.7:
        extras.append(f"{flower['tips']} tips")
        said["tips"] = flower["tips"]
    if flower["double"] and rng.random() < 0.6:
        extras.append(_pick(rng, ("two layers of petals", "layered petals")))
        said["double"] = True
    petals = " ".join(w for w in (count, shape, petal, "petals") if w)
    style = int(rng.integers(4))
    with_centre = True
    if style == 0:
        text = f"this flower has {petals} and {centre}"
    elif style == 1:
        text = f"a flower with {petals} surrounding {centre}"
    elif style == 2:
        with_centre = rng.random() < 0.5
        text = f"the petals of this flower are {petal} and {flower['shape']}" + (f" with {centre}" if with_centre else "")
    else:
        text = f"this {petal} flower has {_join([p for p in (f'{shape} petals' if shape else 'petals', centre) if p], rng)}"
    if extras:
        text += f" with {_join(extras, rng)}"
    if mentions is not None:
        mentions.clear()
        mentions.update(said)
        if shape or style == 2:
            mentions["shape"] = flower["shape"]
        if count and style in (0, 1):
            mentions["count"] = flower["count"]
        if with_centre:
            mentions.update(centre=flower["centre"], **({"centre_size": flower["centre_size"]} if centre_sized else {}))
    return text + ("" if rng.random() < 0.5 else ".")


def _generate_class_level(name: str, root: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, DATASET_CODES[name]])
    sample, vary, render, caption = ((sample_bird, _vary_bird, render_bird, bird_caption) if name == "cub"
                                     else (sample_flower, _vary_flower, render_flower, flower_caption))
    total = sizes["trainval_classes"] + sizes["test_classes"]
    kinds: list = []
    while len(kinds) < total:  # distinct classes, in families
        for candidate in sample_families(total, rng, sample, vary, max_family=3):
            if candidate not in kinds and len(kinds) < total:
                kinds.append(candidate)
    order = rng.permutation(total)
    test_numbers = set(int(i) + 1 for i in order[: sizes["test_classes"]])
    text_root = root / ("cvpr2016_cub" if name == "cub" else "cvpr2016_flowers")
    class_names, image_number = [], 0
    truth: list[dict[str, Any]] = []  # per image: its class's attributes and what each caption states
    for number, kind in enumerate(kinds, start=1):
        class_name = f"{number:03d}.Synthetic_bird_{number:03d}" if name == "cub" else f"class_{number:05d}"
        class_names.append(class_name)
        for k in range(sizes["images_per_class"]):
            image_number += 1
            item_rng = np.random.default_rng([seed, DATASET_CODES[name], number, k])
            if name == "cub":
                stem = f"Synthetic_Bird_{number:03d}_{k:04d}"
                image_path = root / "CUB_200_2011" / "images" / class_name / f"{stem}.jpg"
            else:
                stem = f"image_{image_number:05d}"
                image_path = root / "jpg" / f"{stem}.jpg"
            _save_image(render(kind, item_rng), image_path)
            caption_mentions = [{} for _ in range(10)]
            lines = [caption(kind, item_rng, said) for said in caption_mentions]
            truth.append({"split": "test" if number in test_numbers else "trainval",
                          "file_path": image_path.relative_to(root).as_posix(), "id": number, "attributes": kind,
                          "mentions": caption_mentions})
            if k == 0:  # irregularity: blank lines inside and at the end of a caption file
                lines = lines[:5] + [""] + lines[5:] + ["", ""]
            path = text_root / "text_c10" / class_name / f"{stem}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    trainval = [c for i, c in enumerate(class_names, start=1) if i not in test_numbers]
    test = [c for i, c in enumerate(class_names, start=1) if i in test_numbers]
    (text_root / "trainvalclasses.txt").write_text("\n".join(trainval) + "\n", encoding="utf-8")
    (text_root / "testclasses.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    (text_root / "allclasses.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
    _write_json(root / GROUND_TRUTH, truth)
    return {key: {"classes": len(classes), "images": len(classes) * sizes["images_per_class"],
                  "captions": len(classes) * sizes["images_per_class"] * 10}
            for key, classes in (("trainval", trainval), ("test", test))}


# ====================================================================== entry points
def sizes_for(name: str, profile: str) -> dict[str, int]:
    if profile not in SIZES:
        raise ValueError(f"parameter profile={profile!r} is not one of {', '.join(SIZES)}")
    if name not in SIZES[profile]:
        raise ValueError(f"parameter name={name!r} is not one of {', '.join(SIZES[profile])}")
    return SIZES[profile][name]


def is_complete(root: str | os.PathLike, name: str, profile: str, seed: int = 0) -> bool:
    """True when ``root`` holds a finished generation of ``name`` for this profile, seed and generator version,
    with its :data:`GROUND_TRUTH` (older generations lack it for some datasets: regenerating writes the same data)."""
    marker = Path(root) / MARKER
    if not marker.is_file() or not (Path(root) / GROUND_TRUTH).is_file():
        return False
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return False
    return (meta.get("name"), meta.get("profile"), meta.get("seed"), meta.get("generator_version"), meta.get("sizes")) == \
        (name, profile, seed, GENERATOR_VERSION, sizes_for(name, profile))


def generate(name: str, root: str | os.PathLike, profile: str, seed: int = 0,
             sizes: dict[str, int] | None = None) -> Path:
    """Write synthetic ``name`` in its real layout under ``root`` (replacing what is there); return ``root``.

    Written into a temporary sibling folder and renamed into place when complete; the last
    file written is ``synthetic.json`` (name, profile, seed, sizes, timing).
    """
    root = Path(root)
    sizes = dict(sizes) if sizes is not None else sizes_for(name, profile)
    generators = {"cuhk_pedes": _generate_cuhk, "cub": _generate_class_level, "flowers": _generate_class_level,
                  "flickr30k": _generate_karpathy, "mscoco": _generate_karpathy,
                  "icfg_pedes": _generate_person_json, "rstpreid": _generate_person_json}
    if name not in generators:
        raise ValueError(f"parameter name={name!r} is not one of {', '.join(generators)}")
    from ..core.atomic import naming_write_failures

    with naming_write_failures(root):  # a full disk / read-only folder: an error naming root and the cause
        return _generate_into(name, root, profile, seed, sizes, generators)


def _generate_into(name: str, root: Path, profile: str, seed: int, sizes: dict[str, int],
                   generators: dict[str, Callable[..., dict]]) -> Path:
    """:func:`generate` after its checks: a temporary sibling folder, renamed into place when complete."""
    root.parent.mkdir(parents=True, exist_ok=True)
    temporary = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    started = time.perf_counter()
    try:
        if name == "cuhk_pedes":
            stats = _generate_cuhk(temporary, sizes, seed)
        else:
            stats = generators[name](name, temporary, sizes, seed)
        meta = {"name": name, "profile": profile, "seed": seed, "generator_version": GENERATOR_VERSION, "sizes": sizes,
                "image_size": list(IMAGE_SIZES[name]), "statistics": stats}
        (temporary / MARKER).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(temporary, root)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    seconds = time.perf_counter() - started
    timing = root / "generation_seconds.txt"  # kept out of the marker so files stay byte-identical across runs
    timing.write_text(f"{seconds:.2f}\n", encoding="utf-8")
    return root


# ====================================================================== ICFG-PEDES / RSTPReid-like
# Both came out after the paper. Same person renderer and caption grammar as the CUHK-PEDES stand-in,
# written in their own distributed layouts (``data.PERSON_JSON``):
# * icfg_pedes: ``ICFG-PEDES.json`` = [{id, file_path, captions, processed_tokens, split}], split train / test
#   only, one caption an image, images at ``imgs/<train|test>/<id>/<id>_<view>.jpg``;
# * rstpreid: ``data_captions.json`` = [{id, img_path, captions, split}], split train / val / test, five
#   images an identity (the real set: five cameras), two captions an image, images at ``imgs/<id>_c<cam>_<view>.jpg``.
PERSON_JSON_SPLITS = {"icfg_pedes": ("train", "test"), "rstpreid": ("train", "val", "test")}


def _generate_person_json(name: str, root: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    """Write synthetic ICFG-PEDES or RSTPReid under ``root``; statistics per split (ICFG-PEDES's train is
    reported as ``trainval``: readers carve ``val`` from it)."""
    from .text import tokenize

    code = DATASET_CODES[name]
    rng = np.random.default_rng([seed, code])
    records: list[dict[str, Any]] = []
    truth: list[dict[str, Any]] = []  # per image: its attributes and what each of its captions states
    stats: dict[str, Any] = {}
    next_id = 1
    for split in PERSON_JSON_SPLITS[name]:
        identities = sample_families(sizes[f"{split}_ids"], rng, sample_person, vary_person)
        images = captions = 0
        for person in identities:
            person_id, next_id = next_id, next_id + 1
            item_rng = np.random.default_rng([seed, code, person_id])
            shades = _person_colours(person, item_rng)
            views = int(item_rng.integers(2, 5)) if name == "icfg_pedes" else 5
            for view in range(views):
                pixels = render_person(person, shades, item_rng)
                caption_mentions = [{} for _ in range(1 if name == "icfg_pedes" else 2)]
                texts = [person_caption(person, item_rng, said) for said in caption_mentions]
                if name == "icfg_pedes":
                    relative = f"{split}/{person_id:04d}/{person_id:04d}_{view:03d}.jpg"
                    record = {"id": person_id, "file_path": relative, "captions": texts,
                              "processed_tokens": [tokenize(text) for text in texts], "split": split}
                else:
                    relative = f"{person_id:04d}_c{view + 1}_{view:04d}.jpg"
                    record = {"id": person_id, "img_path": relative, "captions": texts, "split": split}
                _save_image(pixels, root / "imgs" / relative)
                records.append(record)
                truth.append({"split": split, "file_path": relative, "id": person_id,
                              "attributes": visible_attributes(person), "mentions": caption_mentions})
                images, captions = images + 1, captions + len(texts)
        key = "trainval" if (name == "icfg_pedes" and split == "train") else split
        stats[key] = {"ids": len(identities), "images": images, "captions": captions}
    _write_json(root / ("ICFG-PEDES.json" if name == "icfg_pedes" else "data_captions.json"), records)
    _write_json(root / GROUND_TRUTH, truth)
    return stats


def recorded_sizes(root: str | os.PathLike) -> list[tuple[str, str, int | None, int | None, int | None]]:
    """The sizes the generator recorded in ``root/synthetic.json``, as rows like ``data.PUBLISHED_SIZES``:
    ``(dataset, split, images, captions, ids_or_classes)``; None where the marker does not say (older
    generations did not count captions). Raises ``FileNotFoundError`` when ``root`` is not synthetic."""
    marker = Path(root) / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} does not exist: {root} is not a generated synthetic dataset")
    meta = json.loads(marker.read_text(encoding="utf-8"))
    name, statistics = meta["name"], meta["statistics"]
    rows = []
    for split, counts in statistics.items():
        images = counts.get("images")
        groups = counts.get("ids", counts.get("classes", images))  # Flickr30K / MSCOCO: every image is its own label
        rows.append((name, split, images, counts.get("captions"), groups))
    if {"trainval", "test"} <= set(statistics) and all("classes" in statistics[s] for s in ("trainval", "test")):
        total = [sum(statistics[s].get(key) or 0 for s in ("trainval", "test")) if all(statistics[s].get(key) is not None
                 for s in ("trainval", "test")) else None for key in ("images", "captions", "classes")]
        rows.append((name, "all", *total))
    return rows
