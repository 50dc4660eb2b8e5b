"""Captions to token ids: the tokenizer and the vocabulary of the released code.

Facts followed (the authors' release, ``builddata/dataset_utils.py``, and the paper):

* CUHK-PEDES: a caption is lower-cased, its punctuation **deleted**
  (``caption.lower().translate(None, string.punctuation)``: "t-shirt" -> "tshirt",
  "man's" -> "mans") and split on white space; the ``processed_tokens`` field is recomputed
  this way (:func:`tokenize`). CUB / Flowers (no code released) use the same rule.
* Flickr30K / MSCOCO: the Karpathy JSON's ``tokens`` are used as given (see
  :mod:`cmp_utils.data`); :func:`tokenize` only serves a sentence that lacks them.
* the vocabulary is built from **training captions only**, keeps words seen at least
  ``min_count = 3`` times, ordered by frequency (ties broken alphabetically here, so the
  order is reproducible), and maps every other word to one ``<unk>`` id;
* ``<start>`` and ``<end>`` wrap each sentence; the model input drops the last token
  (``<end>``): :meth:`Vocabulary.encode` with ``for_model_input=True`` returns exactly that;
* id 0 is padding (``pad_id``); batches are padded dynamically (:func:`pad_token_ids`).

Ids: ``0 <pad>``, ``1 <start>``, ``2 <end>``, ``3 <unk>``, then the words, most frequent first.

Two deviations of a public PyTorch port are options of :class:`Vocabulary` (off by default):
``case_sensitive`` ("A" and "a" are two words; the captions must then be tokenised with
``lowercase=False``) and ``pad_shares_most_frequent`` (the most frequent word gets the padding
id 0, so its embedding is the padding row: zero and never trained).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    import torch

PAD, START, END, UNKNOWN = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNKNOWN)
#: Names the tokenisation rule; stored with a saved vocabulary so a rule change never reuses it.
TOKENISATION = "release-v2: ascii punctuation deleted, other symbols split; karpathy tokens as given"

# Every ASCII punctuation mark is deleted (the release: str.translate(None, string.punctuation)) ...
_PUNCTUATION = re.compile("[" + re.escape(string.punctuation) + "]")
# ... and any other non-word, non-space character (curly quotes, dashes, ...) becomes a space.
_OTHER_SYMBOLS = re.compile(r"[^\w\s]", re.UNICODE)


def tokenize(caption: str, lowercase: bool = True) -> list[str]:
    """Lower-case ``caption`` (unless ``lowercase=False``), delete punctuation, split on white space.

    >>> tokenize("A woman, wearing a RED t-shirt.")
    ['a', 'woman', 'wearing', 'a', 'red', 'tshirt']
    """
    if not isinstance(caption, str):
        raise TypeError(f"tokenize expects a caption string, got {type(caption).__name__}: {caption!r}")
    text = _PUNCTUATION.sub("", caption.lower() if lowercase else caption)
    text = _OTHER_SYMBOLS.sub(" ", text)
    return text.split()


class Vocabulary:
    """Word <-> id table with ``<pad>`` = 0, ``<start>``, ``<end>`` and one ``<unk>`` id.

    Build it with :meth:`build` from the training split's token lists only; save it once
    beside the prepared data (:meth:`save`, JSON, atomic) and :meth:`load` it everywhere else.

    Options (release default ``False`` both):

    * ``case_sensitive``: when ``False`` every token is lower-cased before counting and lookup
      (a no-op on the release's lower-cased tokens); ``True`` keeps "A" and "a" apart, as a port.
    * ``pad_shares_most_frequent``: a port's table, where the most frequent word's id is the
      padding id 0 (``id_of(words[0]) == pad_id``), so ``len`` is one less and that word's
      embedding row is the padding row.
    """

    pad_id = 0
    start_id = 1
    end_id = 2
    unknown_id = 3

    def __init__(
        self,
        words: Sequence[str],
        min_count: int = 3,
        counts: Sequence[int] | None = None,
        meta: dict[str, Any] | None = None,
        case_sensitive: bool = False,
        pad_shares_most_frequent: bool = False,
    ):
        words = list(words)
        clash = [w for w in words if w in SPECIAL_TOKENS]
        if clash:
            raise ValueError(f"Vocabulary words may not include the special tokens {clash}")
        if len(set(words)) != len(words):
            raise ValueError("Vocabulary words must be unique")
        if not case_sensitive and any(word != word.lower() for word in words):
            raise ValueError("a case-insensitive Vocabulary holds lower-case words only; pass case_sensitive=True")
        self.words: list[str] = words
        self.min_count = int(min_count)
        self.counts: list[int] | None = list(counts) if counts is not None else None
        self.meta: dict[str, Any] = dict(meta or {})
        self.case_sensitive = bool(case_sensitive)
        self.pad_shares_most_frequent = bool(pad_shares_most_frequent) and bool(words)
        own_rows = words[1:] if self.pad_shares_most_frequent else words
        self.itos: list[str] = list(SPECIAL_TOKENS) + own_rows
        self.stoi: dict[str, int] = {word: index for index, word in enumerate(self.itos)}
        if self.pad_shares_most_frequent:
            self.stoi[words[0]] = self.pad_id

    @property
    def options(self) -> dict[str, bool]:
        """The options that change ids: part of a saved vocabulary's key."""
        return {"case_sensitive": self.case_sensitive, "pad_shares_most_frequent": self.pad_shares_most_frequent}

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        min_count: int = 3,
        meta: dict[str, Any] | None = None,
        case_sensitive: bool = False,
        pad_shares_most_frequent: bool = False,
    ) -> "Vocabulary":
        """Count words over ``token_lists`` (training captions only) and keep those seen ``>= min_count`` times.

        Order: descending frequency, ties alphabetical.
        """
        if min_count < 1:
            raise ValueError(f"parameter min_count={min_count} must be at least 1")
        counter: Counter[str] = Counter()
        for tokens in token_lists:
            if isinstance(tokens, str):
                raise TypeError("Vocabulary.build expects token lists (use text.tokenize), got a string")
            counter.update(tokens if case_sensitive else (token.lower() for token in tokens))
        kept = [(word, count) for word, count in counter.items() if count >= min_count and word not in SPECIAL_TOKENS]
        kept.sort(key=lambda item: (-item[1], item[0]))
        return cls(
            [w for w, _ in kept],
            min_count=min_count,
            counts=[c for _, c in kept],
            meta=meta,
            case_sensitive=case_sensitive,
            pad_shares_most_frequent=pad_shares_most_frequent,
        )

    # ------------------------------------------------------------------ encoding
    def __len__(self) -> int:
        """Number of ids, specials included (the embedding table needs this many rows)."""
        return len(self.itos)

    def _key(self, word: str) -> str:
        return word if self.case_sensitive else word.lower()

    def __contains__(self, word: str) -> bool:
        return self._key(word) in self.stoi

    def id_of(self, word: str) -> int:
        """The id of ``word``, ``unknown_id`` if it is not in the vocabulary."""
        return self.stoi.get(self._key(word), self.unknown_id)

    def encode(self, tokens: Sequence[str], for_model_input: bool = False) -> list[int]:
        """``[<start>, w_1 .. w_n, <end>]`` as ids; with ``for_model_input`` the last token is dropped.

        The released code feeds the LSTM ``[<start>, w_1 .. w_n]`` (length n + 1).
        """
        if isinstance(tokens, str):
            raise TypeError("Vocabulary.encode expects a token list (use text.tokenize first), got a string")
        ids = [self.start_id] + [self.id_of(token) for token in tokens] + [self.end_id]
        return ids[:-1] if for_model_input else ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> list[str]:
        """Ids back to words (padding and, by default, the other specials left out; with
        ``pad_shares_most_frequent`` id 0 decodes as padding)."""
        words = []
        for index in ids:
            index = int(index)
            if skip_special and index in (self.pad_id, self.start_id, self.end_id):
                continue
            words.append(self.itos[index])
        return words

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "cmp-repro-vocabulary-1",
            "special_tokens": list(SPECIAL_TOKENS),
            "min_count": self.min_count,
            "words": self.words,
            "counts": self.counts,
            "meta": self.meta,
            **self.options,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON, atomically."""
        from ..core.atomic import write_text

        return write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a vocabulary written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no vocabulary file at {path}; build one with Vocabulary.build(...).save(path) "
                "or let data.prepare_dataset create it"
            )
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"vocabulary file {path} is not valid JSON ({error}); delete it to rebuild") from error
        if payload.get("special_tokens") != list(SPECIAL_TOKENS):
            raise ValueError(
                f"vocabulary file {path} uses special tokens {payload.get('special_tokens')}, "
                f"expected {list(SPECIAL_TOKENS)}; delete it to rebuild"
            )
        return cls(
            payload["words"],
            min_count=payload.get("min_count", 3),
            counts=payload.get("counts"),
            meta=payload.get("meta"),
            case_sensitive=bool(payload.get("case_sensitive", False)),
            pad_shares_most_frequent=bool(payload.get("pad_shares_most_frequent", False)),
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.itos == other.itos
            and self.min_count == other.min_count
            and self.options == other.options
            and self.stoi == other.stoi
        )

    def __repr__(self) -> str:
        preview = ", ".join(self.words[:5])
        return f"Vocabulary({len(self)} ids, min_count={self.min_count}: {preview}{', ...' if len(self.words) > 5 else ''})"


def pad_token_ids(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Token-id sequences (lists or 1-d tensors) as one batch: ``token_ids`` (N, T) long, each row
    padded with ``pad_id`` after its tokens to the longest length T (1 when ``sequences`` is
    empty), and ``lengths`` (N,) long. The one place where captions are padded."""
    import torch

    lengths = torch.tensor([len(ids) for ids in sequences], dtype=torch.long)  # (N,)
    token_ids = torch.full(
        (len(sequences), int(lengths.max()) if len(sequences) else 1), pad_id, dtype=torch.long
    )  # (N, T)
    for row, ids in enumerate(sequences):
        token_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return token_ids, lengths
