"""Data for SLAP: manifests, the embedded synthetic corpus, caption fields."""

# A manifest's ``captions`` field holds every caption of a clip joined by this.
CAPTION_SEPARATOR = " | "


def split_captions(captions: str) -> list[str]:
    """The captions of one clip from a manifest's ``captions`` field.

    Example
    -------
    >>> split_captions("A dog barks. | Barking.")
    ['A dog barks.', 'Barking.']
    """
    return [c.strip() for c in captions.split(CAPTION_SEPARATOR) if c.strip()]
