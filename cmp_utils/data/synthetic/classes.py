"""Synthetic class-level data (CUB birds, Oxford-102 flowers): a class is a combination of attributes, rendered
and described."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .drawing import COLOURS, Canvas, _a, _colour_word, _jitter, _join, _pick, _rotated_ellipse

# ====================================================================== CUB-like birds
BIRD_COLOURS = ("red", "blue", "yellow", "black", "white", "grey", "brown", "orange", "green")


def sample_bird(rng: np.random.Generator) -> dict[str, Any]:
    """A random bird: the colour or shape of each of its parts."""
    return {
        "crown": _pick(rng, BIRD_COLOURS),
        "body": _pick(rng, BIRD_COLOURS),
        "wing": _pick(rng, BIRD_COLOURS),
        "belly": _pick(rng, BIRD_COLOURS),
        "beak": _pick(rng, ("short", "long", "hooked")),
        "beak_colour": _pick(rng, ("black", "orange", "yellow", "grey")),
        "tail": _pick(rng, ("short", "long")),
        "wing_bars": bool(rng.random() < 0.35),
        "size": _pick(rng, ("small", "large")),
    }


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
        canvas.ellipse(
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(4, 14),
            rng.uniform(3, 9),
            _jitter(background, rng, 25),
        )
    s = (1.0 if bird["size"] == "large" else 0.75) * rng.uniform(0.85, 1.1)
    cx, cy = width / 2 + rng.uniform(-6, 6), height / 2 + rng.uniform(-5, 3)
    tilt = rng.uniform(-0.45, 0.15)
    cos, sin = math.cos(tilt), math.sin(tilt)

    def P(u, v):  # bird frame: u forward (right), v down
        return (cx + (u * cos - v * sin) * s, cy + (u * sin + v * cos) * s)

    branch_y = cy + 13 * s
    canvas.line(
        [(0, branch_y + rng.uniform(-3, 3)), (width, branch_y + rng.uniform(-3, 3))],
        _jitter((100, 70, 40), rng, 12),
        2.2,
    )
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
    canvas.draw.pieslice(
        [
            (head[0] - 6 * s) * canvas.s,
            (head[1] - 6 * s) * canvas.s,
            (head[0] + 6 * s) * canvas.s,
            (head[1] + 6 * s) * canvas.s,
        ],
        180,
        360,
        fill=tuple(colour["crown"]),
    )
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
    pool = [
        _a(f"{c('crown')} crown"),
        f"{c('wing')} wings" + (" with white wing bars" if bird["wing_bars"] else ""),
        _a(f"{c('belly')} belly"),
    ]
    beak_coloured = rng.random() < 0.6
    pool += [
        _a(f"{bird['beak']} {c('beak_colour')} beak") if beak_coloured else _a(f"{bird['beak']} beak"),
        _a(f"{bird['tail']} tail"),
        _a(f"{c('body')} body"),
    ]
    stated = [
        ("crown",),
        ("wing", "wing_bars") if bird["wing_bars"] else ("wing",),
        ("belly",),
        ("beak", "beak_colour") if beak_coloured else ("beak",),
        ("tail",),
        ("body",),
    ]
    if bird["wing_bars"] and rng.random() < 0.5:
        pool.append("wingbars")
        stated.append(("wing_bars",))
    keep = [index for index in range(len(pool)) if rng.random() < 0.5] or [int(rng.integers(len(pool)))]
    kept = [pool[index] for index in keep]
    rng.shuffle(kept)
    size_word = (
        _pick(rng, ("small", "little", "tiny"))
        if bird["size"] == "small"
        else _pick(rng, ("large", "big", "medium sized"))
    )
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
    return {
        "petal": _pick(rng, PETAL_COLOURS),
        "count": _pick(rng, COUNT_WORDS),
        "shape": _pick(rng, ("round", "pointed", "long thin")),
        "centre": _pick(rng, ("yellow", "brown", "black", "green", "white", "orange")),
        "centre_size": _pick(rng, ("small", "large")),
        "tips": _pick(rng, ("none", "none", "white", "yellow", "purple")),
        "double": bool(rng.random() < 0.3),
    }


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
        canvas.ellipse(
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(3, 10),
            rng.uniform(2, 6),
            _jitter(background, rng, 30),
        )
    cx, cy = width / 2 + rng.uniform(-7, 7), height / 2 + rng.uniform(-7, 7)
    s = rng.uniform(0.75, 1.1)
    canvas.line([(cx, cy), (cx + rng.uniform(-8, 8), height)], _jitter((60, 130, 50), rng, 15), 2.0)
    petal_colour, centre_colour = (
        _jitter(COLOURS[flower["petal"]], rng, 14),
        _jitter(COLOURS[flower["centre"]], rng, 12),
    )
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
                canvas.polygon(
                    _rotated_ellipse(tx, ty, reach * 0.22, breadth * s * 0.7, angle, 12),
                    _jitter(COLOURS[flower["tips"]], rng, 10),
                )
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
    centre = _a(
        f"{flower['centre_size'] + ' ' if centre_sized else ''}{_colour_word(flower['centre'], rng)} {centre_noun}"
    )
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
        text = f"the petals of this flower are {petal} and {flower['shape']}" + (
            f" with {centre}" if with_centre else ""
        )
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
