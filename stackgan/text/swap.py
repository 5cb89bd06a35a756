"""Colour-swapped captions: hard negatives that differ from a caption only in which part has
which colour ("a red bird with blue wings" -> "a blue bird with red wings").

A text-conditional discriminator that never sees such pairs can match image and caption by
the colours they mention without checking where each colour is (a bag of words; the failure
NegCLIP's word-order negatives target, Yuksekgonul et al., ICLR 2023). The colour words are
those of CUB-200-2011's colour attributes plus "gray" and "gold".
"""

from __future__ import annotations

import re

COLOUR_WORDS = frozenset(
    {
        "black",
        "blue",
        "brown",
        "buff",
        "gold",
        "gray",
        "green",
        "grey",
        "iridescent",
        "olive",
        "orange",
        "pink",
        "purple",
        "red",
        "rufous",
        "white",
        "yellow",
    }
)
_WORD = re.compile(r"[A-Za-z]+")


def swap_colour_words(caption: str) -> str | None:
    """The caption with its first two distinct colour words exchanged everywhere (whole
    words, case-insensitive, keeping each occurrence's capitalisation); None when it names
    fewer than two distinct colours."""
    colours: list[str] = []
    for word in _WORD.findall(caption):
        w = word.lower()
        if w in COLOUR_WORDS and w not in colours:
            colours.append(w)
            if len(colours) == 2:
                break
    if len(colours) < 2:
        return None
    a, b = colours

    def _swap(m: re.Match[str]) -> str:
        word = m.group(0)
        low = word.lower()
        if low not in (a, b):
            return word
        other = b if low == a else a
        return other.capitalize() if word[0].isupper() else other

    return _WORD.sub(_swap, caption)
