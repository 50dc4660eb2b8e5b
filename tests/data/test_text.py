"""Tokenizer and vocabulary rules of the released code."""

from __future__ import annotations

import json

import pytest

from cmp_utils.data.text import SPECIAL_TOKENS, Vocabulary, pad_token_ids, tokenize


def test_tokenize_lowercases_deletes_punctuation_and_splits():
    # the release (builddata/dataset_utils.py): caption.lower().translate(None, string.punctuation)
    assert tokenize("A woman, wearing a RED t-shirt.") == ["a", "woman", "wearing", "a", "red", "tshirt"]
    assert tokenize("  He's  carrying\ta bag!!  ") == ["hes", "carrying", "a", "bag"]
    assert tokenize("shirt,and") == ["shirtand"]  # deleted, not replaced by a space
    assert tokenize("A Red T-Shirt", lowercase=False) == ["A", "Red", "TShirt"]
    assert tokenize("“Quoted” — dash") == ["quoted", "dash"]
    assert tokenize("...") == []
    with pytest.raises(TypeError, match="caption string"):
        tokenize(["a", "list"])


def test_build_keeps_min_count_and_orders_by_frequency_then_alphabet():
    token_lists = [
        ["red", "shirt", "a"],
        ["a", "blue", "shirt"],
        ["a", "red", "shirt"],
        ["blue", "a", "bag"],
        ["bag", "bag", "blue"],
        ["rare", "rare"],
    ]
    vocabulary = Vocabulary.build(token_lists, min_count=3)
    # counts: a 4, bag 3, blue 3, shirt 3, red 2, rare 2
    assert vocabulary.words == ["a", "bag", "blue", "shirt"]
    assert vocabulary.itos[:4] == list(SPECIAL_TOKENS) and vocabulary.pad_id == 0
    assert len(vocabulary) == 4 + 4
    assert vocabulary.id_of("a") == 4 and vocabulary.id_of("red") == vocabulary.unknown_id
    assert Vocabulary.build(token_lists, min_count=2).words == ["a", "bag", "blue", "shirt", "rare", "red"]


def test_encode_adds_start_end_and_model_input_drops_the_last():
    vocabulary = Vocabulary.build([["a", "red", "coat"]] * 3)
    full = vocabulary.encode(["a", "red", "hat"])
    assert full == [
        vocabulary.start_id,
        vocabulary.id_of("a"),
        vocabulary.id_of("red"),
        vocabulary.unknown_id,
        vocabulary.end_id,
    ]
    assert vocabulary.encode(["a", "red", "hat"], for_model_input=True) == full[:-1]
    assert 0 not in full  # padding id is never a token
    assert vocabulary.decode(full) == ["a", "red", "<unk>"]
    with pytest.raises(TypeError, match="token list"):
        vocabulary.encode("a red coat")


def test_save_load_round_trip(tmp_path):
    vocabulary = Vocabulary.build([["x", "y", "y"]] * 3, meta={"built_from": "train"})
    path = vocabulary.save(tmp_path / "sub" / "vocabulary.json")
    assert json.loads(path.read_text())["words"] == ["y", "x"]
    loaded = Vocabulary.load(path)
    assert loaded == vocabulary and loaded.meta == {"built_from": "train"} and len(loaded) == 6
    assert not list((tmp_path / "sub").glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="Vocabulary.build"):
        Vocabulary.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        Vocabulary.load(tmp_path / "bad.json")


def test_case_sensitive_option_keeps_case_apart():
    token_lists = [["A", "man"], ["a", "man"], ["a", "Man"], ["A", "bag"]] * 3
    folded = Vocabulary.build(token_lists, min_count=3)
    assert folded.words == ["a", "man", "bag"] and folded.counts == [12, 9, 3]
    assert folded.id_of("A") == folded.id_of("a") and "MAN" in folded
    cased = Vocabulary.build(token_lists, min_count=3, case_sensitive=True)
    assert cased.words == ["A", "a", "man", "Man", "bag"] and cased.counts == [6, 6, 6, 3, 3]
    assert cased.id_of("A") != cased.id_of("a") and cased.id_of("MAN") == cased.unknown_id
    with pytest.raises(ValueError, match="case_sensitive=True"):
        Vocabulary(["A"])


def test_pad_shares_most_frequent_option_gives_that_word_the_padding_id(tmp_path):
    token_lists = [["a", "red", "bag"], ["a", "red"], ["a", "bag"], ["red", "bag"]]
    release = Vocabulary.build(token_lists, min_count=1)
    shared = Vocabulary.build(token_lists, min_count=1, pad_shares_most_frequent=True)
    assert release.words == shared.words == ["a", "bag", "red"]
    assert release.id_of("a") == 4 and len(release) == 4 + 3
    assert shared.id_of("a") == shared.pad_id == 0  # the most frequent word is the padding row
    assert shared.id_of("bag") == 4 and shared.id_of("red") == 5 and len(shared) == 4 + 2
    assert shared.encode(["a", "red"]) == [shared.start_id, 0, 5, shared.end_id]
    assert shared != release
    path = tmp_path / "shared.json"
    shared.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == shared and loaded.options == {"case_sensitive": False, "pad_shares_most_frequent": True}


def test_pad_token_ids_pads_after_the_tokens_to_the_longest():
    import torch

    token_ids, lengths = pad_token_ids([[5, 6, 7], [8], torch.tensor([9, 10])], pad_id=0)
    assert token_ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]] and token_ids.dtype == torch.long
    assert lengths.tolist() == [3, 1, 2] and lengths.dtype == torch.long
    empty_ids, empty_lengths = pad_token_ids([], pad_id=0)
    assert empty_ids.shape == (0, 1) and empty_lengths.shape == (0,)


def test_free_sentences_encode_as_captions_do():
    from cmp_utils.evaluation import evaluate

    vocabulary = Vocabulary.build([tokenize("a man in a red shirt")] * 3, min_count=1)
    tensors = evaluate.sentence_tensors(["A man, in red!", "a shirt"], vocabulary)
    expected = [vocabulary.encode(tokenize(s), for_model_input=True) for s in ("A man, in red!", "a shirt")]
    assert tensors["lengths"].tolist() == [len(ids) for ids in expected]
    assert tensors["token_ids"][1, : len(expected[1])].tolist() == expected[1]
