"""Colour-swapped captions (stackgan.text.swap)."""

from __future__ import annotations

from stackgan.text.swap import swap_colour_words
from stackgan.text.twin import COLOUR_NAMES, parse_caption_attributes


def test_the_first_two_colours_change_places_everywhere():
    assert swap_colour_words("a red bird with blue wings.") == "a blue bird with red wings."
    assert (
        swap_colour_words("a bird with a blue crown, a blue belly and black wingbars.")
        == "a bird with a black crown, a black belly and blue wingbars."
    )
    # capitalisation of each occurrence kept; a third colour untouched; no partial words
    assert (
        swap_colour_words("Red wings, a grey belly, white eyes; reddish tail.")
        == "Grey wings, a red belly, white eyes; reddish tail."
    )


def test_captions_with_fewer_than_two_colours_have_no_swap():
    assert swap_colour_words("a small bird with a short beak.") is None
    assert swap_colour_words("a blue bird with blue wings.") is None


def test_twin_captions_swap_their_body_and_wing_colours():
    for body, wing in [("red", "blue"), ("grey", "white"), ("brown", "orange")]:
        assert body in COLOUR_NAMES and wing in COLOUR_NAMES
        for caption in (
            f"this bird has a {body} breast and {wing} wing feathers.",
            f"{wing} wings cover this large bird's {body} body.",
        ):
            swapped = swap_colour_words(caption)
            assert swapped is not None
            assert parse_caption_attributes(swapped) == {"body": wing, "wing": body}
