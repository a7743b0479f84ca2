"""Shared pytest fixtures. The tiny tokenizer lives in the library (`infllava.tiny`), for the demo too."""

from __future__ import annotations

import pytest

from infllava.tiny import TINY_SPECIAL_TOKENS, make_tiny_tokenizer  # noqa: F401


@pytest.fixture
def tiny_tokenizer():
    """A fresh `make_tiny_tokenizer()` (BOS "<s>" added to every encoded text)."""
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_tokenizer_factory():
    """`make_tiny_tokenizer` itself, for tests that need a variant."""
    return make_tiny_tokenizer
