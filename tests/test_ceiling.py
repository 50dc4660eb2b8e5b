"""The attribute oracle's ceiling: ground truth recorded by the generator, exact tie-averaged recall."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from cmp_utils import ceiling, synthetic


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
    images = [{"top_colour": "red", "bag": "none"}, {"top_colour": "red", "bag": "backpack"},
              {"top_colour": "blue", "bag": "backpack"}]
    scores = ceiling.oracle_scores(images, [{"top_colour": "red"}, {"top_colour": "red", "bag": "backpack"}])
    assert scores[0, 0] == scores[0, 1] == 1 and scores[0, 2] < 0
    assert scores[1, 1] == 2 and scores[1, 0] < 0 and scores[1, 2] < 0


def test_caption_mentions_leave_the_caption_unchanged_and_are_stated_in_it():
    for item in range(40):
        person = synthetic._sample_person(np.random.default_rng([7, item]))
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


def test_attach_ceiling_adds_percent_of_ceiling():
    summary = pd.DataFrame({"dataset": ["cuhk_pedes", "cuhk_pedes"], "direction": ["t2i", "t2i"],
                            "metric": ["R@1", "mAP"], "mean": [30.0, 20.0]})
    table = pd.DataFrame({"dataset": ["cuhk_pedes"], "direction": ["t2i"], "metric": ["R@1"], "value": [60.0]})
    out = ceiling.attach_ceiling(summary, table)
    assert out.loc[0, "percent_of_ceiling"] == pytest.approx(50.0)
    assert math.isnan(out.loc[1, "ceiling"])
