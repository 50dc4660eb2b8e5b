"""Synthetic people (CUHK-PEDES, ICFG-PEDES, RSTPReid): attributes, their rendering and captions."""

from __future__ import annotations

from typing import Any

import numpy as np

from .drawing import CLOTHING_COLOURS, COLOURS, IMAGE_SIZES, Canvas, _a, _colour_word, _jitter, _join, _pick, _sentence

HAIR_COLOURS = {
    "black": (20, 18, 18),
    "brown": (90, 55, 30),
    "blonde": (215, 185, 110),
    "grey": (160, 160, 160),
    "red": (150, 50, 25),
}
SKIN_TONES = ((235, 200, 170), (210, 165, 125), (165, 115, 80), (110, 75, 50))


# ====================================================================== CUHK-PEDES-like
PERSON_ATTRIBUTES = (
    "gender",
    "hair_colour",
    "hair_length",
    "hat",
    "hat_colour",
    "top_type",
    "top_colour",
    "pattern",
    "bottom_type",
    "bottom_colour",
    "shoes_colour",
    "bag",
    "bag_colour",
)


def sample_person(rng: np.random.Generator) -> dict[str, Any]:
    gender = _pick(rng, ("man", "woman"))
    person = {
        "gender": gender,
        "hair_colour": _pick(rng, HAIR_COLOURS, p=(0.4, 0.3, 0.15, 0.08, 0.07)),
        "hair_length": _pick(rng, ("short", "long"), p=(0.85, 0.15) if gender == "man" else (0.3, 0.7)),
        "hat": _pick(rng, ("none", "cap", "beanie"), p=(0.7, 0.2, 0.1)),
        "hat_colour": _pick(rng, CLOTHING_COLOURS),
        "top_type": _pick(
            rng,
            ("t-shirt", "shirt", "jacket", "dress") if gender == "woman" else ("t-shirt", "shirt", "jacket"),
            p=(0.35, 0.25, 0.25, 0.15) if gender == "woman" else (0.4, 0.3, 0.3),
        ),
        "top_colour": _pick(rng, CLOTHING_COLOURS),
        "pattern": _pick(rng, ("plain", "striped"), p=(0.8, 0.2)),
        "bottom_type": _pick(
            rng,
            ("pants", "shorts", "skirt") if gender == "woman" else ("pants", "shorts"),
            p=(0.5, 0.2, 0.3) if gender == "woman" else (0.75, 0.25),
        ),
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
    choices = [
        "top_colour",
        "bottom_colour",
        "shoes_colour",
        "bag",
        "bag_colour",
        "hair_colour",
        "hat",
        "pattern",
        "top_type",
        "bottom_colour",
        "top_colour",
    ]
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
    return {
        "hair": _jitter(HAIR_COLOURS[person["hair_colour"]], rng, 12),
        "skin": _jitter(SKIN_TONES[person["skin"]], rng, 8),
        "top": _jitter(COLOURS[person["top_colour"]], rng, 15),
        "bottom": _jitter(COLOURS[person["bottom_colour"]], rng, 15),
        "shoes": _jitter(COLOURS[person["shoes_colour"]], rng, 12),
        "bag": _jitter(COLOURS[person["bag_colour"]], rng, 12),
        "hat": _jitter(COLOURS[person["hat_colour"]], rng, 12),
    }


def render_person(
    person: dict[str, Any],
    shades: dict[str, tuple],
    rng: np.random.Generator,
    size: tuple[int, int] = IMAGE_SIZES["cuhk_pedes"],
) -> np.ndarray:
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
        leg = [
            (X(side * 1), Y(52)),
            (X(side * 10), Y(52)),
            (X(foot + side * 4.5), Y(94)),
            (X(foot - side * 4.5), Y(94)),
        ]
        canvas.polygon(leg, skin)
        if person["bottom_type"] == "pants":
            canvas.polygon(leg, bottom_colour)
        elif person["bottom_type"] == "shorts":
            canvas.polygon(
                [
                    (X(side * 1), Y(52)),
                    (X(side * 11), Y(52)),
                    (X(side * 10.5 + stride * 0.2), Y(68)),
                    (X(side * 1.5), Y(68)),
                ],
                bottom_colour,
            )
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
        arm = [
            (X(side * 12), Y(19)),
            (X(side * 17.5), Y(20)),
            (X(side * 18 + swing), Y(52)),
            (X(side * 13 + swing), Y(52)),
        ]
        canvas.polygon(arm, skin)
        if person["top_type"] in ("shirt", "jacket"):
            canvas.polygon(arm, sleeve_colour)
        elif person["top_type"] in ("t-shirt", "dress"):
            canvas.polygon(
                [
                    (X(side * 12), Y(19)),
                    (X(side * 17.5), Y(20)),
                    (X(side * 17.8 + swing * 0.3), Y(31)),
                    (X(side * 12.5 + swing * 0.3), Y(31)),
                ],
                sleeve_colour,
            )
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


GENDER_WORDS = frozenset(
    {"she", "her", "he", "his", "woman", "lady", "girl", "female", "man", "guy", "male", "gentleman"}
)


def person_caption(person: dict[str, Any], rng: np.random.Generator, mentions: dict[str, str] | None = None) -> str:
    """One annotator's description: synonyms, shuffled order, some attributes left out.

    ``mentions``, when given, is filled with the attributes the caption states and their values
    (``{"top_colour": "red", "bag": "backpack", ...}``): the ground truth of the ceiling
    (:mod:`cmp_utils.evaluation.ceiling`). It draws nothing from ``rng``, so the caption is the same either way.
    """
    woman = person["gender"] == "woman"
    pronoun, possessive = ("she", "her") if woman else ("he", "his")
    noun = _pick(
        rng, ("woman", "lady", "girl", "female", "person") if woman else ("man", "guy", "male", "person", "gentleman")
    )
    word = lambda key: _colour_word(person[key], rng)  # noqa: E731
    phrases: dict[str, str] = {}
    top_nouns = {
        "t-shirt": ("t-shirt", "tee shirt", "short sleeved shirt", "shirt"),
        "shirt": ("long sleeved shirt", "shirt with long sleeves", "sweater", "top"),
        "jacket": ("jacket", "coat", "zip up jacket"),
        "dress": ("dress", "short dress"),
    }
    top_noun = _pick(rng, top_nouns[person["top_type"]])
    pattern = "striped " if person["pattern"] == "striped" and rng.random() < 0.85 else ""
    phrases["top"] = _a(f"{word('top_colour')} {pattern}{top_noun}")
    if person["bottom_type"] != "none":
        bottom_nouns = {
            "pants": ("pants", "trousers", "jeans", "slacks"),
            "shorts": ("shorts", "short pants"),
            "skirt": ("skirt", "knee length skirt"),
        }
        article = "a " if person["bottom_type"] == "skirt" else ""
        bottom = f"{word('bottom_colour')} {_pick(rng, bottom_nouns[person['bottom_type']])}"
        phrases["bottom"] = _a(bottom) if article else bottom
    phrases["shoes"] = f"{word('shoes_colour')} {_pick(rng, ('shoes', 'sneakers', 'boots', 'shoes'))}"
    if person["hat"] != "none":
        hat_noun = "cap" if person["hat"] == "cap" else _pick(rng, ("beanie", "knit hat", "hat"))
        phrases["hat"] = _a(f"{word('hat_colour')} {hat_noun}")
    hair = (
        f"{person['hair_length']} {person['hair_colour']} hair"
        if rng.random() < 0.6
        else f"{person['hair_colour']} hair"
    )
    bag = None
    if person["bag"] != "none":
        bag_noun = {
            "backpack": ("backpack", "back pack", "bag on " + possessive + " back"),
            "handbag": ("handbag", "purse", "hand bag"),
            "shoulder bag": ("shoulder bag", "bag over " + possessive + " shoulder", "messenger bag"),
        }
        bag = f"{_pick(rng, ('carrying', 'holding', 'with', 'has'))} {_a(word('bag_colour') + ' ' + _pick(rng, bag_noun[person['bag']]))}"
    # leave attributes out: annotators mention what they notice
    clothing = [key for key in ("top", "bottom", "shoes", "hat") if key in phrases]
    kept = [key for key in clothing if rng.random() < (0.92 if key == "top" else 0.7)]
    if not kept:
        kept = [_pick(rng, clothing)]
    rng.shuffle(kept)
    wear = _pick(rng, ("wearing", "dressed in", "in", "who is wearing", "wears"))
    opening = _pick(
        rng,
        (_a(noun), f"the {noun}", f"this {noun}", f"a young {noun}")
        + ((f"an adult {noun}",) if noun not in ("girl", "guy") else ()),
    )
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
        parts.append(
            _pick(
                rng,
                (
                    f". {pronoun} is {bag.replace('has ', 'carrying ').replace('with ', 'carrying ')}",
                    f", {bag.replace('has ', 'with ')}",
                ),
            )
        )
    text = "".join(parts)
    caption = ". ".join(_sentence(s.strip()).rstrip(".") for s in text.split(". ") if s.strip()) + "."
    if mentions is not None:
        mentions.clear()
        stated = {
            "top": ("top_type", "top_colour"),
            "bottom": ("bottom_type", "bottom_colour"),
            "shoes": ("shoes_colour",),
            "hat": ("hat", "hat_colour"),
        }
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
