"""Synthetic scenes (Flickr30K, MSCOCO): objects with colours, sizes and left/right relations on a background,
and their captions."""

from __future__ import annotations

from typing import Any

import numpy as np

from .drawing import COLOURS, Canvas, _a, _colour_word, _jitter, _join, _pick, _sentence
from .people import SKIN_TONES

# ====================================================================== Flickr30K / MSCOCO-like scenes
BACKGROUNDS = {  # name: (sky colour, ground colour, phrases)
    "grass": ((140, 185, 235), (70, 150, 60), ("on the grass", "in a grassy field", "in a park", "on a lawn")),
    "beach": ((120, 175, 235), (225, 205, 150), ("on the beach", "on the sand", "by the sea")),
    "snow": ((180, 190, 205), (240, 242, 245), ("in the snow", "on a snowy field", "in winter")),
    "street": ((165, 180, 200), (95, 95, 100), ("on the street", "on a road", "in the city")),
    "room": ((215, 200, 170), (140, 95, 60), ("in a room", "indoors", "inside a house")),
}
SCENE_KINDS = ("ball", "box", "car", "house", "tree", "dog", "kite", "umbrella", "person")
KIND_COLOURS = {
    "tree": ("green", "orange", "yellow"),
    "dog": ("brown", "black", "white", "grey"),
    "house": ("white", "red", "yellow", "blue", "brown", "grey"),
}
KIND_WORDS = {
    "ball": ("ball",),
    "box": ("box", "crate", "cube"),
    "car": ("car", "vehicle", "automobile"),
    "house": ("house", "building", "home"),
    "tree": ("tree",),
    "dog": ("dog", "puppy"),
    "kite": ("kite",),
    "umbrella": ("umbrella", "parasol"),
    "person": ("person", "man", "child"),
}
SCENE_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "grey", "purple", "orange", "pink", "brown")


def _sample_object(rng: np.random.Generator, exclude: tuple = ()) -> dict[str, Any]:
    kind = _pick(rng, [k for k in SCENE_KINDS if k not in exclude])
    return {
        "kind": kind,
        "colour": _pick(rng, KIND_COLOURS.get(kind, SCENE_COLOURS)),
        "size": _pick(rng, ("small", "large")),
    }


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
        target["colour"] = _pick(
            rng, [c for c in KIND_COLOURS.get(target["kind"], SCENE_COLOURS) if c != target["colour"]]
        )
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
        canvas.polygon(
            [(x - w * 0.62, ground - w * 0.8), (x + w * 0.62, ground - w * 0.8), (x, ground - w * 1.35)],
            _jitter((120, 40, 30), rng, 15),
        )
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
        canvas.draw.pieslice(
            [
                (x - 11 * s) * canvas.s,
                (ground - 22 * s) * canvas.s,
                (x + 11 * s) * canvas.s,
                (ground - 6 * s) * canvas.s,
            ],
            180,
            360,
            fill=tuple(colour),
        )
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
    descriptions = [
        [object_description(o, size, colour) for size in (False, True) for colour in (False, True)] for o in objects
    ]
    facts: dict[str, Any] = {"background": scene["background"]}
    counts: dict[str, int] = {}
    for index, options in enumerate(descriptions):
        position = "on the left" if index == 0 else "on the right" if index == len(objects) - 1 else "in the middle"
        for description in options:
            counts[description] = counts.get(description, 0) + 1
            facts[f"object: {description} #{counts[description]}"] = True
            facts[f"{position}: {description}"] = True
        for right in descriptions[index + 1 :]:
            facts.update({f"left of: {a} | {b}": True for a in options for b in right})
    return facts


def _object_phrase(
    obj: dict[str, Any], rng: np.random.Generator, detail: float = 0.8, said: list[str] | None = None
) -> str:
    """A noun phrase for ``obj``; ``said``, when given, gets :func:`object_description` of what it states
    (drawn from nothing: the phrase is the same either way)."""
    words = []
    sized = rng.random() < 0.45
    if sized:
        words.append(
            _pick(rng, ("small", "little", "tiny")) if obj["size"] == "small" else _pick(rng, ("large", "big"))
        )
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
        position = "on the left" if k == 0 else "on the right" if k == len(objects) - 1 else "in the middle"
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
