"""Class names: an artifact's own (metadata ``class_names``: a fine-tune's classes, from CLASS_NAMES= or
its checkpoint), else ImageNet-1k's for a 1000-class ImageNet head (shipped with vitrt so the runtime
does not need timm), else ``class_<i>``."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

LABEL_SETS = ("imagenet-1k",)


@lru_cache(maxsize=None)
def _load(label_set: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if label_set != "imagenet-1k":
        raise KeyError(label_set)
    text = resources.files("vitrt").joinpath("data/imagenet1k_labels.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k descriptions, by class index (``'tabby, tabby cat'`` at 281)."""
    return _load("imagenet-1k")[1]


def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 WordNet synset ids, by class index (``'n02123045'`` at 281)."""
    return _load("imagenet-1k")[0]


def labels_for(label_set: str | None, num_classes: int, class_names=None) -> tuple[str, ...]:
    """Names for ``num_classes`` classes: ``class_names`` when given (one per class), else the named set
    when it fits, else ``'class_<i>'``."""
    if class_names:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        return tuple(str(n) for n in class_names)
    if label_set in LABEL_SETS:
        names = _load(label_set)[1]
        if len(names) == num_classes:
            return names
    return tuple(f"class_{i}" for i in range(num_classes))
