"""Attention maps: the weights the search carried for its answer, and the pictures of them in
`caption --attention`, the evaluation report and the server, on a tiny attention run trained on
the synthetic data (8 x 8 grid cells of mean colours) and on hand-built decoders."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from captioner.config import DecodeConfig
from captioner.data.text import END_ID, START_ID
from captioner.inference.attention_maps import COLUMNS, DPI, PANEL_INCHES, TITLE_INCHES, layout
from captioner.model.search import make_beam_search, make_decoder, make_greedy_search
from tests.conftest import CHELSEA, TINY_ENCODER, tiny_conv_run
from tests.test_decode import random_log_tables, tiny_decoder
from tests.test_end_to_end import TINY_MODEL

pytestmark = pytest.mark.slow  # trains a tiny attention run once for the module


def cli(*args):
    from captioner.cli import cli as command

    return CliRunner().invoke(command, [str(a) for a in args])


@pytest.fixture(autouse=True)
def no_background_export(monkeypatch):
    monkeypatch.setenv("CAPTIONER_FAST_START", "0")  # `caption` would export in the background


@pytest.fixture(scope="module")
def attention_run(flickr8k_data, tmp_path_factory):
    """A run of the attention decoder on the tiny encoder's grids (20 epochs: a few seconds)."""
    folder = tmp_path_factory.mktemp("attention")
    common = ["--data", flickr8k_data, "--encoder", TINY_ENCODER, "--features",
              folder / "grids", "--no-progress"]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("CAPTIONER_CACHE", str(folder / "cache"))
        for args in (
            ["extract", *common, "--weights", "none", "--grid"],
            ["train", *common, "--run-dir", folder / "run", "--epochs", 20, "--batch-size", 32,
             "--learning-rate", 0.01, "--set", "model.decoder=attention", *TINY_MODEL],
        ):  # fmt: skip
            result = cli(*args)
            assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.fixture(scope="module")
def attention_captioner(attention_run):
    from captioner import Captioner

    return Captioner.load(attention_run)


@pytest.fixture(scope="module")
def test_photos(flickr8k_data):
    return sorted((flickr8k_data / "Flicker8k_Dataset").iterdir())[-6:]


def assert_maps(weights, words: int):
    assert weights.shape == (words, 8, 8) and weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert (weights >= 0).all()


@pytest.mark.parametrize("beam", [1, 3])
def test_the_caption_comes_with_one_map_per_word_from_the_same_search(
    attention_captioner, test_photos, beam
):
    plain = attention_captioner.caption(test_photos, beam=beam, scores=True)
    mapped = attention_captioner.caption(test_photos, beam=beam, scores=True, attention=True)
    for (caption, score), (same_caption, same_score, weights) in zip(plain, mapped):
        assert same_caption == caption and same_score == pytest.approx(score, rel=1e-6)
        assert_maps(weights, len(caption.split()))
    caption, weights = attention_captioner.caption(test_photos[0], beam=beam, attention=True)
    assert caption == plain[0][0]
    np.testing.assert_array_equal(weights, mapped[0][2])
    # The maps differ from word to word: the decoder does look at different cells.
    assert max(np.abs(w - w[:1]).max() for _, _, w in mapped) > 1e-3


def test_an_ensemble_shows_the_mean_of_its_members_maps(attention_captioner, attention_run):
    from captioner import Captioner

    photo = CHELSEA
    caption, weights = attention_captioner.caption(photo, attention=True)
    twice = Captioner.load(attention_run, attention_run).caption(photo, attention=True)
    assert twice[0] == caption
    np.testing.assert_allclose(twice[1], weights, rtol=1e-5, atol=1e-7)


class LookingSteps:
    """A bigram table per photo (features (B, 1): its number) whose attention depends on the
    whole path of its beam: a memory of the words so far, each step half the one before plus
    the word's own cell, normalized."""

    def __init__(self, log_tables):
        import tensorflow as tf

        self.log_tables = tf.constant(np.stack(log_tables))
        self.cells = self.log_tables.shape[1]  # a cell per word

    def initial_state(self, features):
        import tensorflow as tf

        photos = tf.cast(features[:, 0], tf.int32)
        return [photos, tf.zeros([tf.shape(features)[0], self.cells])]

    def step(self, tokens, state):
        return self.step_with_attention(tokens, state)[:2]

    def step_with_attention(self, tokens, state):
        import tensorflow as tf

        memory = 0.5 * state[1] + tf.one_hot(tokens, self.cells)
        log_probs = tf.gather_nd(self.log_tables, tf.stack([state[0], tokens], axis=1))
        return log_probs, [state[0], memory], memory / tf.reduce_sum(memory, 1, keepdims=True)


def maps_of_path(ids, cells: int) -> np.ndarray:
    """What LookingSteps attends to at each word of a caption (ids, <end> and <pad> after)."""
    words = [int(w) for w in ids if w not in (0, END_ID)]
    memory, maps = np.zeros(cells), np.zeros((len(ids), cells), np.float32)
    for t, previous in enumerate([START_ID, *words[:-1]] if words else []):
        memory = 0.5 * memory + np.eye(cells)[previous]
        maps[t] = memory / memory.sum()
    return maps


@pytest.mark.parametrize("beam_size, no_repeat_ngram", [(1, 0), (2, 2), (3, 0), (5, 3)])
def test_the_search_returns_each_answers_own_maps(beam_size, no_repeat_ngram):
    """Tables made to tie, so that beams change parents at every step, and photos leave the
    batch at different steps: each answer's maps are those of its own path, and its words and
    scores those of the search without attention."""
    tables = [t for seed in range(3) for t in random_log_tables(seed, 6)]
    for at, table in zip((5, 11), random_log_tables(9, 2)):  # two that never end, mid-batch
        table[:, END_ID] = -np.inf
        tables.insert(at, table)
    photos = np.arange(len(tables), dtype=np.float32)[:, None]
    options = (12, beam_size, 8, 0.7, no_repeat_ngram)
    if beam_size == 1:
        plain = make_greedy_search(LookingSteps(tables), 12, 8, length_penalty=0.7)
        mapped = make_greedy_search(LookingSteps(tables), 12, 8, length_penalty=0.7,
                                    with_attention=True)  # fmt: skip
    else:
        plain = make_beam_search(LookingSteps(tables), *options)
        mapped = make_beam_search(LookingSteps(tables), *options, with_attention=True)
    ids, scores = (x.numpy() for x in plain(photos))
    same_ids, same_scores, maps = (x.numpy() for x in mapped(photos))
    np.testing.assert_array_equal(same_ids, ids)
    np.testing.assert_array_equal(same_scores, scores)
    for row, row_maps in zip(ids, maps):
        np.testing.assert_allclose(row_maps, maps_of_path(row, 12), rtol=1e-6, atol=1e-7)
    assert len(set((ids != 0).sum(axis=1))) >= 3  # photos leave the batch at several steps
    assert END_ID not in ids[5] and END_ID not in ids[11]  # their best live beam's


def test_the_answer_that_ends_and_the_one_that_never_does_carry_their_own_maps():
    """ "b c <end>" wins with length penalty 1 over "a <end>", the first beam: its second map is
    after b. A caption that never ends gets its best live beam's maps."""
    from tests.test_decode import A, B, C, V, log_bigrams

    table = {START_ID: {A: 0.3, B: 0.7}, A: {END_ID: 0.9, C: 0.1}, B: {C: 0.4, END_ID: 0.1},
             C: {END_ID: 0.9, A: 0.1}}  # fmt: skip
    never_ends = {START_ID: {A: 0.6, B: 0.4}, A: {B: 0.7, C: 0.3}, B: {A: 0.8, C: 0.2}, C: {A: 1.0}}
    for steps, penalty, caption in (
        (LookingSteps([log_bigrams(table, V)]), 1.0, [B, C, END_ID, 0]),
        (LookingSteps([log_bigrams(never_ends, V, never_ends=True)]), 0.7, [A, B, A, B]),
    ):
        beam = make_beam_search(steps, V, 3, 4, penalty, with_attention=True)
        ids, _, maps = (x.numpy() for x in beam(np.zeros((1, 1), np.float32)))
        assert list(ids[0]) == caption
        np.testing.assert_allclose(maps[0], maps_of_path(ids[0], V), rtol=1e-6)
        assert maps[0][1][caption[0]] > 0.5 and maps[0][1][A if caption[0] == B else B] == 0


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_photo_gets_the_same_maps_in_a_batch_or_alone(beam_size):
    from captioner.model.decoder import DecoderSteps

    steps = DecoderSteps(tiny_decoder(3, "attention", sharp=True))
    features = np.random.RandomState(2).normal(size=(8, 12)).astype(np.float32) * 3
    decode = make_decoder(steps, 30, DecodeConfig(beam_size=beam_size, max_length=8),
                          attention=True)  # fmt: skip
    ids, _, maps = decode(features)
    assert maps.shape == (8, 8, 4)
    for i in range(len(features)):
        alone_ids, _, alone_maps = decode(features[i : i + 1])
        np.testing.assert_array_equal(alone_ids[0], ids[i])
        np.testing.assert_allclose(alone_maps[0], maps[i], rtol=1e-5, atol=1e-6)
    words = ((ids != 0) & (ids != END_ID)).sum(axis=1)
    np.testing.assert_allclose(maps.sum(-1), np.arange(8)[None] < words[:, None], rtol=1e-5)


def png_size(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        return image.size


def test_caption_draws_a_panel_per_word(attention_run, test_photos, tmp_path):
    photo = test_photos[0]
    result = cli("caption", "--run", attention_run, photo, "--attention", tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    words = result.output.strip().split("\t")[1].split()
    rows, columns = layout(len(words))
    panel = round(PANEL_INCHES * DPI)
    height = round(rows * (PANEL_INCHES + TITLE_INCHES) * DPI)
    assert png_size(tmp_path / "a.png") == (columns * panel, height)
    short = cli("caption", "--run", attention_run, photo, "--max-length", 2,
                "--attention", tmp_path / "short.png")  # fmt: skip
    assert short.exit_code == 0 and len(short.output.split("\t")[1].split()) <= 2 < len(words)
    assert png_size(tmp_path / "short.png")[0] < png_size(tmp_path / "a.png")[0]
    assert layout(7) == (2, COLUMNS) and layout(1) == (1, 1)
    # Several photos: a folder, one PHOTO.attention.png each, as --save does.
    several = cli(
        "caption", "--run", attention_run, *test_photos[:2], "--attention", tmp_path / "maps"
    )
    assert several.exit_code == 0, several.output
    drawn = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert drawn == sorted(f"{p.stem}.attention.png" for p in test_photos[:2])


@pytest.fixture(scope="module")
def lstm_run(flickr8k_data, tmp_path_factory):
    """A run of the plain LSTM decoder (pooled features): nothing to draw."""
    return tiny_conv_run(flickr8k_data, tmp_path_factory.mktemp("lstm"), 1)


def test_a_run_without_attention_gets_one_line(attention_run, lstm_run, tmp_path):
    result = cli("caption", "--run", lstm_run, CHELSEA, "--attention", tmp_path / "a.png")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == (
        f"Error: --attention: {lstm_run} decodes without attention (model.decoder = "
        "lstm): nothing to draw\n"
    )
    assert not (tmp_path / "a.png").exists()
    with_output = cli("caption", "--run", attention_run, CHELSEA, "--attention", "a.png",
                      "--output", "c.csv")  # fmt: skip
    assert with_output.exit_code == 1 and with_output.output == (
        "Error: --attention draws photos one at a time: use it without --output\n"
    )


def test_the_shipped_model_draws_its_attention_out_of_the_box(
    shipped_captioner, cli_caption_of_chelsea, tmp_path
):
    # The shipped Up-Down pair reads Lite1's 8 x 8 grid: no run, no extraction step to give.
    result = cli("caption", CHELSEA, "--attention", tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    assert result.output == f"{CHELSEA}\t{cli_caption_of_chelsea}\n"  # the plain caption
    words = cli_caption_of_chelsea.split()
    rows, columns = layout(len(words))
    height = round(rows * (PANEL_INCHES + TITLE_INCHES) * DPI)
    assert png_size(tmp_path / "a.png") == (columns * round(PANEL_INCHES * DPI), height)
    caption, weights = shipped_captioner.caption(CHELSEA, attention=True)
    assert caption == cli_caption_of_chelsea
    assert_maps(weights, len(words))  # the ensemble's maps: its members' averaged


def test_the_report_shows_the_best_and_worst_captions_attention(attention_run, tmp_path):
    result = cli("evaluate", "--run", attention_run, "--report", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert page.count('<img class="attention"') == 2 * 8  # best and worst, not random
    assert page.count('class="attention" alt="attention of each word of: ') == 16
    assert page.count('src="data:image/png;base64,') == 16
    assert page.count('src="data:image/jpeg;base64,') == 3 * 8  # the thumbnails, as before


def test_the_server_answers_attention_1_for_an_attention_run(attention_captioner, test_photos):
    from starlette.testclient import TestClient

    from captioner.serving.app import create_app

    photo = test_photos[0].read_bytes()
    with TestClient(create_app(attention_captioner)) as client:
        assert client.get("/api/health").json()["attention"] is True
        upload = {"files": [("file", ("p.jpg", photo, "image/jpeg"))]}
        plain = client.post("/api/caption?beam=3", **upload).json()["captions"][0]
        answer = client.post("/api/caption?beam=3&attention=1", **upload)
        assert answer.status_code == 200, answer.text
        mapped = answer.json()["captions"][0]
        assert mapped["caption"] == plain["caption"] and "attention" not in plain
        attention = mapped["attention"]
        assert attention["words"] == plain["caption"].split() and attention["grid"] == [8, 8]
        weights = np.array(attention["weights"])
        assert weights.shape == (len(attention["words"]), 8, 8)
        np.testing.assert_allclose(weights.sum(axis=(1, 2)), 1.0, atol=1e-3)
        bad = client.post("/api/caption?attention=yes", **upload)
        assert bad.status_code == 400 and bad.json()["error"] == "attention: 'yes' is not 0 or 1"


def test_the_server_refuses_attention_for_a_run_without_it(lstm_run):
    from starlette.testclient import TestClient

    from captioner import Captioner
    from captioner.serving.app import create_app

    with TestClient(create_app(Captioner.load(lstm_run))) as client:
        assert client.get("/api/health").json()["attention"] is False
        answer = client.post(
            "/api/caption?attention=1", files=[("file", ("cat.jpg", CHELSEA.read_bytes()))]
        )
        assert answer.status_code == 400
        assert answer.json() == {
            "error": f"attention=1: {lstm_run} decodes without attention "
            "(model.decoder = lstm): nothing to draw"
        }
        assert "attention" in client.get("/").text  # the page's option, hidden for this model
