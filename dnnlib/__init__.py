"""Small helpers that EDM-family pickles and configs refer to."""

from .util import EasyDict

__all__ = ["EasyDict"]
