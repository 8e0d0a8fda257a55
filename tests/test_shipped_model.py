"""The reference model installed with the package captions a photo offline, with no run given."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.cli import cli

CAT = Path(__file__).parent / "data" / "chelsea.jpg"


def test_shipped_model_captions_a_photo_and_stops_by_itself():
    from captioner.config import DecodeConfig
    from captioner.data.images import load_image
    from captioner.data.text import END_ID
    from captioner.features.encoders import make_encode_function
    from captioner.model.decoder import DecoderSteps
    from captioner.model.rundir import load_run
    from captioner.model.search import make_decoder

    run = load_run()  # the shipped one
    assert run.encoder.name == "efficientnet_lite1" and "provenance" in run.info
    assert run.config.model.decoder == "updown" and run.encoder.cells == 64  # Lite1's 8 x 8 grid
    # Its own encoder: ImageNet's by name, or the weights it ships where it was fine-tuned.
    encoder = run.load_encoder()
    features = make_encode_function(encoder, 1)(load_image(CAT, run.encoder.input_size)[None])
    steps = DecoderSteps(run.load_model())
    for beam in (1, 3):
        ids = make_decoder(steps, len(run.vocabulary), DecodeConfig(beam_size=beam))(features)[0]
        assert END_ID in ids  # it ends by itself, well before the length limit
        assert 3 <= len(run.vocabulary.decode(ids)) < 20


@pytest.mark.slow
def test_caption_decodes_with_the_settings_chosen_on_dev_unless_told_otherwise():
    def caption(*options) -> str:
        result = CliRunner().invoke(cli, ["caption", str(CAT), *options])
        assert result.exit_code == 0, result.output
        path, text = result.output.strip().split("\t")
        assert path == str(CAT)
        return text

    # The shipped run.json says beam 3 (README, "Results"): the default is that, not greedy.
    default = caption()
    assert default == caption("--beam", "3")
    # Greedy's "a dog is sitting on a chair": its words lead the next by 0.046 or more in
    # log-probability at every step, beam 3's decisions by 0.008 (test_api); kernels: 3e-7.
    assert default != caption("--beam", "1")
