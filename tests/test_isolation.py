"""The suite keeps its caches to itself: nothing it runs writes into the user's home folder."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def cache_of_session_fixtures():
    """Where captioner caches things for a session-scoped fixture, as the shipped model's and
    the CLI's caption of the cat are."""
    from captioner.files import user_cache_dir

    return user_cache_dir()


def test_session_fixtures_cache_into_the_session_folder(cache_of_session_fixtures, session_cache):
    # Session-scoped fixtures run before any per-test `isolated` cache exists: what they cache
    # (converted ImageNet weights, light exports) goes where $CAPTIONER_CACHE pointed then. Had
    # they run with the user's environment, it would be ~/.cache/captioner.
    assert cache_of_session_fixtures == session_cache
    assert os.environ["CAPTIONER_CACHE"] != str(session_cache)  # tests still get their own
