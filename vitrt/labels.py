"""ImageNet-1k class names, shipped with vitrt so the runtime does not need timm."""

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


def labels_for(label_set: str | None, num_classes: int) -> tuple[str, ...]:
    """Names for ``num_classes`` classes: the named set when it fits, else ``'class_<i>'``."""
    if label_set in LABEL_SETS:
        names = _load(label_set)[1]
        if len(names) == num_classes:
            return names
    return tuple(f"class_{i}" for i in range(num_classes))
