"""The attribute oracle's ceiling: ground truth recorded by the generator, exact tie-averaged recall."""

import hashlib
import itertools
import json

import numpy as np
import pytest

from cmp_utils.evaluation import ceiling
from cmp_utils.data import synthetic


def test_expected_recall_averages_ties_exactly():
    # query 0: correct item tied with 3 wrong ones -> R@1 = 1/4, R@2 = 1 - C(3,2)/C(4,2) = 1/2
    # query 1: one wrong item strictly above the correct one -> R@1 = 0, R@2 = 1
    scores = np.array([[5.0, 5, 5, 5, 0], [3, 4, 1, 0, 0]])
    correct = np.array([[True, False, False, False, False], [True, False, False, False, False]])
    recall = ceiling.expected_recall(scores, correct, ks=(1, 2, 5))
    assert recall[1] == pytest.approx(100 * (0.25 + 0.0) / 2)
    assert recall[2] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert recall[5] == pytest.approx(100.0)


def test_expected_recall_matches_random_tie_breaking_by_simulation():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, size=(30, 12)).astype(float)
    correct = np.zeros((30, 12), dtype=bool)
    correct[np.arange(30), rng.integers(0, 12, size=30)] = True
    correct[np.arange(30), rng.integers(0, 12, size=30)] = True
    exact = ceiling.expected_recall(scores, correct, ks=(1, 3))
    hits = {1: 0.0, 3: 0.0}
    trials = 3000
    for _ in range(trials):
        jitter = scores + rng.random(scores.shape) * 1e-3  # random order inside each tie
        order = np.argsort(-jitter, axis=1)
        ranked_correct = np.take_along_axis(correct, order, axis=1)
        for k in hits:
            hits[k] += ranked_correct[:, :k].any(axis=1).mean()
    for k in hits:
        assert 100 * hits[k] / trials == pytest.approx(exact[k], abs=1.5)


def test_oracle_scores_compatible_images_equally_and_rules_out_contradictions():
    images = [
        {"top_colour": "red", "bag": "none"},
        {"top_colour": "red", "bag": "backpack"},
        {"top_colour": "blue", "bag": "backpack"},
    ]
    scores = ceiling.oracle_scores(images, [{"top_colour": "red"}, {"top_colour": "red", "bag": "backpack"}])
    assert scores[0, 0] == scores[0, 1] == 1 and scores[0, 2] < 0
    assert scores[1, 1] == 2 and scores[1, 0] < 0 and scores[1, 2] < 0


def test_caption_mentions_leave_the_caption_unchanged_and_are_stated_in_it():
    for item in range(40):
        person = synthetic.sample_person(np.random.default_rng([7, item]))
        plain = synthetic.person_caption(person, np.random.default_rng([8, item]))
        mentions: dict = {}
        recorded = synthetic.person_caption(person, np.random.default_rng([8, item]), mentions)
        assert recorded == plain
        text = plain.lower()
        for name, value in mentions.items():
            assert person[name] == value
            if name.endswith("_colour"):
                assert any(word in text for word in synthetic.COLOUR_WORDS.get(value, (value,))), (name, value, plain)
        if "gender" not in mentions:
            assert not synthetic.GENDER_WORDS & set(text.replace(".", " ").replace(",", " ").split())


def test_generator_writes_ground_truth_beside_the_data_and_the_ceiling_is_informative(tmp_path):
    root = synthetic.generate("cuhk_pedes", tmp_path / "cuhk", "smoke")
    truth_path = root / synthetic.GROUND_TRUTH
    raw = json.loads((root / "reid_raw.json").read_text())
    truth = json.loads(truth_path.read_text())
    assert [t["file_path"] for t in truth] == [r["file_path"] for r in raw]
    assert [len(t["mentions"]) for t in truth] == [len(r["captions"]) for r in raw]
    records = ceiling.load_ground_truth(root, "test")
    table = ceiling.ceiling_from_ground_truth(records)
    assert list(table.columns) == ceiling.CEILING_COLUMNS
    values = table.set_index(["direction", "metric"])["value"]
    for direction in ("t2i", "i2t"):
        assert 0 < values[direction, "R@1"] <= values[direction, "R@5"] <= values[direction, "R@10"] <= 100
    # the true image always fits its own caption, so text-to-image never has a wrong image above it
    scores = ceiling.oracle_scores([r["attributes"] for r in records], [m for r in records for m in r["mentions"]])
    own = np.repeat(np.arange(len(records)), [len(r["mentions"]) for r in records])
    assert (scores[np.arange(len(own)), own] == [len(m) for r in records for m in r["mentions"]]).all()
    # same seed, same ground truth, byte for byte
    again = synthetic.generate("cuhk_pedes", tmp_path / "again", "smoke")
    assert (again / synthetic.GROUND_TRUTH).read_bytes() == truth_path.read_bytes()


# ---------------------------------------------------------------- every protocol, against a naive transcription
def _naive_scores(image_attributes, queries):
    """The module docstring's score, one pair at a time."""
    scores = []
    for said in queries:
        row = []
        for attributes in image_attributes:
            matches = sum(attributes.get(name) == value for name, value in said.items())
            row.append(matches if matches == len(said) else matches - 1000)
        scores.append(row)
    return np.array(scores, dtype=float)


def _naive_mean_over_tie_orders(scores, correct, metric):
    """100 x the mean over queries of ``metric(ranked correctness)``, averaged over every gallery order
    that keeps the scores descending (every way of ordering the ties)."""
    per_query = []
    for query_scores, query_correct in zip(scores, correct):
        values = [
            metric([query_correct[j] for j in order])
            for order in itertools.permutations(range(len(query_scores)))
            if all(query_scores[a] >= query_scores[b] for a, b in zip(order, order[1:]))
        ]
        per_query.append(np.mean(values))
    return 100 * float(np.mean(per_query))


def _recall(k):
    return lambda ranked: float(any(ranked[:k]))


def _value(table, dataset, direction, metric):
    hit = table[(table["dataset"] == dataset) & (table["direction"] == direction) & (table["metric"] == metric)]
    assert len(hit) == 1, (dataset, direction, metric)
    return float(hit["value"].iloc[0])


PEOPLE = [  # two identities share a red top; identity 2 has two images
    {"id": 1, "attributes": {"top_colour": "red", "bag": "none"}, "mentions": [{"top_colour": "red"}, {"bag": "none"}]},
    {"id": 2, "attributes": {"top_colour": "red", "bag": "backpack"}, "mentions": [{"top_colour": "red"}]},
    {
        "id": 2,
        "attributes": {"top_colour": "red", "bag": "backpack"},
        "mentions": [{"bag": "backpack", "top_colour": "red"}],
    },
    {"id": 3, "attributes": {"top_colour": "blue", "bag": "none"}, "mentions": [{"bag": "none"}]},
]


def _naive_caption_level(records, ks=ceiling.RECALL_AT):
    queries = [m for r in records for m in r["mentions"]]
    labels = np.array([r["id"] for r in records for _ in r["mentions"]])
    scores = _naive_scores([r["attributes"] for r in records], queries)
    correct = labels[:, None] == np.array([r["id"] for r in records])[None, :]
    return {("t2i", k): _naive_mean_over_tie_orders(scores, correct, _recall(k)) for k in ks} | {
        ("i2t", k): _naive_mean_over_tie_orders(scores.T, correct.T, _recall(k)) for k in ks
    }


@pytest.mark.parametrize("dataset", ["cuhk_pedes", "icfg_pedes", "rstpreid"])
def test_person_ceiling_counts_the_same_identity_as_correct(dataset):
    table = ceiling.ceiling_from_ground_truth(PEOPLE, dataset)
    for (direction, k), expected in _naive_caption_level(PEOPLE).items():
        assert _value(table, dataset, direction, f"R@{k}") == pytest.approx(expected)
    # caption "red top" of identity 1 ties with identity 2's two images: R@1 = 1/3
    assert _value(table, dataset, "t2i", "R@1") < 100


def _scenes():
    red_ball, blue_car = (
        {"kind": "ball", "colour": "red", "size": "small"},
        {"kind": "car", "colour": "blue", "size": "large"},
    )
    green_tree = {"kind": "tree", "colour": "green", "size": "large"}
    scenes = [
        {"background": "grass", "objects": [red_ball, blue_car]},
        {"background": "grass", "objects": [blue_car, red_ball]},
        {"background": "beach", "objects": [red_ball, green_tree, blue_car]},
    ]
    mentions = [
        [
            {"object: red ball #1": True, "object: car #1": True, "left of: red ball | car": True},
            {"background": "grass"},
        ],
        [{"on the left: large car": True, "object: large car #1": True}],
        [{"object: ball #1": True, "in the middle: tree": True, "object: tree #1": True}, {"background": "beach"}],
    ]
    return [
        {"id": index, "attributes": synthetic.scene_facts(scene), "mentions": said}
        for index, (scene, said) in enumerate(zip(scenes, mentions))
    ]


def test_scene_ceiling_counts_only_the_captions_own_image_as_correct():
    records = _scenes()
    table = ceiling.ceiling_from_ground_truth(records, "flickr30k")
    for (direction, k), expected in _naive_caption_level(records).items():
        assert _value(table, "flickr30k", direction, f"R@{k}") == pytest.approx(expected)
    # "grass" fits images 0 and 1; "red ball left of a car" fits images 0 and 2 (not 1: its car is on the left)
    assert _value(table, "flickr30k", "t2i", "R@1") == pytest.approx(100 * (0.5 + 0.5 + 1 + 1 + 1) / 5)


def test_mscoco_ceiling_reports_both_tables_1k_as_the_mean_of_five_folds():
    records = [*_scenes(), *[{**r, "id": r["id"] + 3} for r in _scenes()[:2]]]  # five images: folds of one image each
    table = ceiling.ceiling_from_ground_truth(records, "mscoco")
    assert set(table["dataset"]) == {"mscoco_1k", "mscoco_5k"}
    for (direction, k), expected in _naive_caption_level(records).items():
        assert _value(table, "mscoco_5k", direction, f"R@{k}") == pytest.approx(expected)
        assert _value(table, "mscoco_1k", direction, f"R@{k}") == pytest.approx(100.0)  # a one-image gallery


BIRDS = [  # class 2 differs from class 1 only in wing bars, which captions state only when present
    {"id": 1, "attributes": {"wing": "red", "wing_bars": True}, "mentions": [{"wing": "red"}, {"wing_bars": True}]},
    {"id": 1, "attributes": {"wing": "red", "wing_bars": True}, "mentions": [{"wing": "red"}]},
    {"id": 2, "attributes": {"wing": "red", "wing_bars": False}, "mentions": [{"wing": "red"}]},
    {"id": 3, "attributes": {"wing": "blue", "wing_bars": False}, "mentions": [{}]},
]


@pytest.mark.parametrize("dataset", ["cub", "flowers"])
def test_class_level_ceiling_scores_one_query_per_class_like_the_protocol(dataset):
    table = ceiling.ceiling_from_ground_truth(BIRDS, dataset)
    assert sorted(zip(table["direction"], table["metric"])) == [
        ("i2t", "top1_accuracy"),
        ("t2i", f"ap@{ceiling.AP_AT}"),
    ]
    classes = [1, 2, 3]
    union = [{k: v for r in BIRDS if r["id"] == c for m in r["mentions"] for k, v in m.items()} for c in classes]
    scores = _naive_scores([r["attributes"] for r in BIRDS], union)  # (C, N_I)
    correct = np.array(classes)[:, None] == np.array([r["id"] for r in BIRDS])[None, :]
    top1 = _naive_mean_over_tie_orders(scores.T, correct.T, _recall(1))
    ap = _naive_mean_over_tie_orders(scores, correct, lambda ranked: sum(ranked[: ceiling.AP_AT]) / ceiling.AP_AT)
    assert _value(table, dataset, "i2t", "top1_accuracy") == pytest.approx(top1)
    assert _value(table, dataset, "t2i", f"ap@{ceiling.AP_AT}") == pytest.approx(ap)
    # each image's own class states the most it has (absent wing bars are never stated); AP@50 divides by 50,
    # and with four images every class's images are all in its top 50
    assert top1 == pytest.approx(100 * (1 + 1 + 1 + 1) / 4) and ap == pytest.approx(100 * (2 + 1 + 1) / 3 / 50)


def test_expected_precision_averages_a_straddling_tie():
    # top 3: one sure correct item, then 2 places among a tie of 1 correct and 3 wrong -> 1 + 2 * 1/4 = 1.5 hits
    scores = np.array([[9.0, 5, 5, 5, 5, 0]])
    correct = np.array([[True, True, False, False, False, True]])
    assert ceiling.expected_precision(scores, correct, 3) == pytest.approx(100 * 1.5 / 3)


# ---------------------------------------------------------------- the generators' ground truth, every dataset
#: Digest of the smoke-profile caption files (seed 0), measured before the generators recorded ground truth
#: for every dataset: recording what captions state must leave the data byte-identical.
SMOKE_CAPTION_DIGESTS = {
    "cuhk_pedes": "c8819e9377809d68119f9811bfa20e38",
    "flickr30k": "16a1fe1cc43713134ca413924d5ce245",
    "mscoco": "92ac25129ce3c28f23c5d4e8bb05b0e5",
    "cub": "e3012245d3666c1657b7f5f91e626c2b",
    "flowers": "419aa8a4e0fa82a9238ee2c0bcf6f7f2",
    "icfg_pedes": "0ca94d434789a9fdcd971d9cbb788a9d",
    "rstpreid": "fb327e950b6efcd0a11884e89e976520",
}
CAPTION_FILES = {
    "cuhk_pedes": "reid_raw.json",
    "flickr30k": "dataset_flickr30k.json",
    "mscoco": "dataset_coco.json",
    "icfg_pedes": "ICFG-PEDES.json",
    "rstpreid": "data_captions.json",
}


def _caption_digest(root, dataset):
    paths = (
        [root / CAPTION_FILES[dataset]]
        if dataset in CAPTION_FILES
        else [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix().startswith("cvpr2016_")]
    )
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
    return digest.hexdigest()[:32]


@pytest.mark.parametrize("dataset", ceiling.DATASETS_WITH_CEILING)
def test_every_generator_records_ground_truth_without_changing_the_data(tmp_path, dataset):
    root = synthetic.generate(dataset, tmp_path / dataset, "smoke")
    assert _caption_digest(root, dataset) == SMOKE_CAPTION_DIGESTS[dataset]
    assert synthetic.is_complete(root, dataset, "smoke")
    records = ceiling.load_ground_truth(root, "test")
    table = ceiling.ceiling_from_ground_truth(records, dataset)
    assert table["value"].between(0, 100).all() and len(table) >= 2
    # the true pair is always compatible: a caption's own image matches everything it states
    scores = ceiling.oracle_scores([r["attributes"] for r in records], [m for r in records for m in r["mentions"]])
    own = np.repeat(np.arange(len(records)), [len(r["mentions"]) for r in records])
    assert (scores[np.arange(len(own)), own] == [len(m) for r in records for m in r["mentions"]]).all()
    # a generation that lost its ground truth is incomplete, so ensure_synthetic regenerates it
    (root / synthetic.GROUND_TRUTH).unlink()
    assert not synthetic.is_complete(root, dataset, "smoke")


@pytest.mark.parametrize(
    "caption, sample",
    [
        (synthetic.scene_caption, synthetic.sample_scene),
        (synthetic.bird_caption, synthetic.sample_bird),
        (synthetic.flower_caption, synthetic.sample_flower),
    ],
)
def test_recording_mentions_leaves_captions_and_the_random_stream_unchanged(caption, sample):
    for item in range(60):
        thing = sample(np.random.default_rng([3, item]))
        plain_rng, recorded_rng = np.random.default_rng([4, item]), np.random.default_rng([4, item])
        mentions: dict = {}
        assert caption(thing, recorded_rng, mentions) == caption(thing, plain_rng)
        assert recorded_rng.random() == plain_rng.random()  # the same draws were consumed
        assert mentions
        facts = synthetic.scene_facts(thing) if caption is synthetic.scene_caption else thing
        assert all(facts.get(name) == value for name, value in mentions.items()), (thing, mentions)
