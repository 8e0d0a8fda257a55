"""The suite keeps its caches to itself: nothing it runs writes into the user's home folder."""

from __future__ import annotations

import os


def test_session_fixtures_convert_the_shipped_encoder_into_the_session_cache(
    shipped_captioner, cli_caption_of_chelsea, session_cache
):
    # The shipped model's EfficientNet-Lite1 is converted once, by whichever of these two
    # session-scoped fixtures runs first, before any per-test `isolated` cache exists: had
    # they run with the user's environment, the .npz would be in ~/.cache/captioner instead.
    assert [p.name for p in session_cache.glob("efficientnet_lite1*")], session_cache
    assert os.environ["CAPTIONER_CACHE"] != str(session_cache)  # tests still get their own
