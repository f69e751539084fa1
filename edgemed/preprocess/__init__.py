"""Preprocessing: a declarative spec and its CPU reference implementation."""

from __future__ import annotations

from edgemed.preprocess.cpu import Placement, allocate, place, preprocess, preprocess_image
from edgemed.preprocess.spec import PreprocessSpec, Window

__all__ = [
    "Placement",
    "PreprocessSpec",
    "Window",
    "allocate",
    "place",
    "preprocess",
    "preprocess_image",
]
