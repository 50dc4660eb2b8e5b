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
  caption grammar in their own layouts (``writers``).

Irregularities of the real files are reproduced: a CUHK image with 10 captions (and one
with 4), mixed ``.png`` / ``.jpg`` / ``.bmp``; MSCOCO images with more than 5 sentences;
blank lines in the CUB / Flowers caption files.

Every generator also writes :data:`GROUND_TRUTH` beside the data (outside the real layout): per
image its attributes (a scene's as :func:`scene_facts`) and what each of its captions states, which
the caption functions record by side effect without drawing from the random generator, so the
data files are the same with or without it (:mod:`cmp_utils.ceiling` reads it).

Everything is drawn from ``numpy.random.default_rng([seed, dataset, item])``, so the same
seed writes byte-identical files. :data:`SIZES` holds the sizes per profile (plain data).

Modules: ``drawing`` (shared colours, canvas, phrasing), ``people``, ``scenes``, ``classes`` (birds and flowers),
``writers`` (one writer per layout, :func:`generate`).
"""

from .writers import (
    GENERATOR_VERSION,
    MARKER,
    GROUND_TRUTH,
    SIZES,
    DATASET_CODES,
    CUHK_FOLDERS,
    sizes_for,
    is_complete,
    generate,
    PERSON_JSON_SPLITS,
    recorded_sizes,
)
from .drawing import (
    SUPERSAMPLE,
    IMAGE_SIZES,
    COLOURS,
    CLOTHING_COLOURS,
    COLOUR_WORDS,
    Canvas,
    sample_families,
)
from .people import (
    HAIR_COLOURS,
    SKIN_TONES,
    PERSON_ATTRIBUTES,
    sample_person,
    vary_person,
    visible_attributes,
    render_person,
    GENDER_WORDS,
    person_caption,
)
from .scenes import (
    BACKGROUNDS,
    SCENE_KINDS,
    KIND_COLOURS,
    KIND_WORDS,
    SCENE_COLOURS,
    sample_scene,
    render_scene,
    object_description,
    scene_facts,
    scene_caption,
)
from .classes import (
    BIRD_COLOURS,
    sample_bird,
    render_bird,
    bird_caption,
    PETAL_COLOURS,
    COUNT_WORDS,
    sample_flower,
    render_flower,
    flower_caption,
)

__all__ = [
    "GENERATOR_VERSION",
    "MARKER",
    "GROUND_TRUTH",
    "SIZES",
    "DATASET_CODES",
    "CUHK_FOLDERS",
    "sizes_for",
    "is_complete",
    "generate",
    "PERSON_JSON_SPLITS",
    "recorded_sizes",
    "SUPERSAMPLE",
    "IMAGE_SIZES",
    "COLOURS",
    "CLOTHING_COLOURS",
    "COLOUR_WORDS",
    "Canvas",
    "sample_families",
    "HAIR_COLOURS",
    "SKIN_TONES",
    "PERSON_ATTRIBUTES",
    "sample_person",
    "vary_person",
    "visible_attributes",
    "render_person",
    "GENDER_WORDS",
    "person_caption",
    "BACKGROUNDS",
    "SCENE_KINDS",
    "KIND_COLOURS",
    "KIND_WORDS",
    "SCENE_COLOURS",
    "sample_scene",
    "render_scene",
    "object_description",
    "scene_facts",
    "scene_caption",
    "BIRD_COLOURS",
    "sample_bird",
    "render_bird",
    "bird_caption",
    "PETAL_COLOURS",
    "COUNT_WORDS",
    "sample_flower",
    "render_flower",
    "flower_caption",
]
