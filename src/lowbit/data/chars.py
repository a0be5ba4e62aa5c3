"""Character vocabularies for character-level language models."""

from __future__ import annotations

from collections import Counter

import torch

from ..errors import DataError

UNKNOWN = "\ufffd"  # id 0: every character outside the vocabulary


class CharVocab:
    """Id 0 is the unknown character; the others are ``chars`` in order."""

    def __init__(self, chars: str):
        if UNKNOWN in chars or len(set(chars)) != len(chars):
            raise DataError("a character vocabulary needs distinct characters, without U+FFFD (the unknown one)")
        self.chars = UNKNOWN + chars
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str, min_count: int = 1) -> "CharVocab":
        """The characters seen at least ``min_count`` times, most frequent first (ties by code point)."""
        counts = Counter(text)
        kept = sorted((c for c, n in counts.items() if n >= min_count and c != UNKNOWN),
                      key=lambda c: (-counts[c], c))
        return cls("".join(kept))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index.get(c, 0) for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)
