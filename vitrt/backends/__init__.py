"""Inference backends behind one small interface: ``run(feed: dict) -> dict``."""

from .base import Backend

__all__ = ["Backend"]
