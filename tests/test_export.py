"""`captioner export`: a SavedModel that TensorFlow alone runs, ONNX models that the light
runtime runs without TensorFlow, both captioning photos as `Captioner.caption` does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from captioner.cli import cli
from tests.conftest import CHELSEA, tiny_conv_run

pytestmark = pytest.mark.slow

# Loads a SavedModel where `import captioner` fails, captions the photos, then tries bad input.
LOAD_SAVED_MODEL = """
import json, sys
sys.modules["captioner"] = None  # nothing of captioner may be needed
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
photos = [open(path, "rb").read() for path in sys.argv[2:]]
out = serve(images=tf.constant(photos))
errors = {}
for name, data in (("empty", b""), ("text", b"not an image"), ("truncated", photos[0][:200])):
    try:
        serve(images=tf.constant([data]))
    except tf.errors.InvalidArgumentError as error:
        errors[name] = error.message
again = serve(images=tf.constant(photos[:1]))["captions"].numpy()[0].decode()
print(json.dumps({"captions": [c.decode() for c in out["captions"].numpy()],
                  "scores": out["scores"].numpy().tolist(), "errors": errors, "again": again}))
"""
# Runs `python -m captioner.runtime` where TensorFlow and Keras cannot be imported.
WITHOUT_TENSORFLOW = """
import runpy, sys
sys.modules["tensorflow"] = sys.modules["keras"] = None
sys.argv = ["captioner.runtime", *sys.argv[1:]]
runpy.run_module("captioner.runtime", run_name="__main__")
"""


CLI = "from captioner.cli import main; main()"
# Runs the `captioner` command where TensorFlow and Keras cannot be imported.
CLI_WITHOUT_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = sys.modules["keras"] = None
from captioner.cli import main
sys.argv = ["captioner", *sys.argv[1:]]
main()
"""


def invoke(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def python(code: str, *args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def runs(flickr8k_data, tmp_path_factory):
    """A tiny run on the tiny conv encoder's features, and a copy whose encoder was fine-tuned."""
    folder = tmp_path_factory.mktemp("export-runs")
    tiny_conv_run(flickr8k_data, folder, 3, decode={"beam_size": 3, "no_repeat_ngram": 2})
    invoke("finetune-encoder", "--run", folder / "run", "--run-dir", folder / "tuned",
           "--epochs", 1, "--encoder-learning-rate", 0.01, "--batch-size", 16,
           "--no-progress")  # fmt: skip
    return folder / "run", folder / "tuned"


@pytest.fixture(scope="module")
def photos(flickr8k_data):
    return sorted((Path(flickr8k_data) / "Flicker8k_Dataset").glob("*.jpg"))[-12:]


def api_captions(run_dirs, photos):
    from captioner import Captioner

    return Captioner.load(*run_dirs).caption(photos, scores=True)


def test_a_saved_model_captions_as_the_api_does_without_captioner(runs, photos, tmp_path):
    run, _ = runs
    result = invoke("export", tmp_path / "exported", "--run", run)
    assert result.output.strip().endswith(f"-> {tmp_path / 'exported' / '1'}")
    loaded = python(LOAD_SAVED_MODEL, tmp_path / "exported" / "1", *photos, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    got = json.loads(loaded.stdout.splitlines()[-1])
    want = api_captions([run], photos)
    assert got["captions"] == [caption for caption, _ in want]
    np.testing.assert_allclose(got["scores"], [score for _, score in want], rtol=1e-4)
    # Bad photos: the request fails with TensorFlow's reason, the model goes on serving.
    assert set(got["errors"]) == {"empty", "text", "truncated"}, got["errors"]
    assert "Input is empty." in got["errors"]["empty"]
    assert "Unknown image file format. One of JPEG" in got["errors"]["text"]
    assert "Invalid JPEG data" in got["errors"]["truncated"]
    assert got["again"] == want[0][0]
    manifest = json.loads((tmp_path / "exported" / "captioner-export.json").read_text())
    assert manifest["kind"] == "saved_model" and manifest["versions"] == [1]
    assert manifest["decoding"] == {"beam_size": 3, "max_length": 30, "length_penalty": 0.7,
                                    "no_repeat_ngram": 2}  # fmt: skip


def test_saved_model_cli_lists_and_runs_the_signature(runs, photos, tmp_path):
    run, _ = runs
    invoke("export", tmp_path / "exported", "--run", run, "--beam", 1)
    tool = str(Path(sys.executable).parent / "saved_model_cli")
    shown = subprocess.run([tool, "show", "--dir", tmp_path / "exported" / "1", "--all"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "signature_def['serving_default']" in shown.stdout
    assert "inputs['images'] tensor_info:" in shown.stdout
    assert "outputs['captions'] tensor_info:" in shown.stdout
    np.save(tmp_path / "images.npy", np.array([photos[0].read_bytes()], object))
    ran = subprocess.run([tool, "run", "--dir", tmp_path / "exported" / "1", "--tag_set", "serve",
                          "--signature_def", "serving_default",
                          "--inputs", f"images={tmp_path / 'images.npy'}"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    from captioner import Captioner

    caption = Captioner.load(run).caption(photos[0], beam=1)  # greedy: --beam 1 above
    assert f"[b'{caption}']" in ran.stdout


def test_the_light_runtime_captions_an_ensemble_without_tensorflow(runs, photos, tmp_path):
    run, tuned = runs
    invoke("export", tmp_path / "light", "--run", run, "--run", tuned, "--format", "onnx")
    unreadable = tmp_path / "notes.jpg"
    unreadable.write_text("not a photo")
    ran = python(WITHOUT_TENSORFLOW, tmp_path / "light", *photos, unreadable, cwd=tmp_path)
    assert ran.returncode == 1  # one photo could not be read
    assert ran.stderr.strip() == f"{unreadable}: cannot read this image (UnidentifiedImageError: " \
        f"cannot identify image file '{unreadable}')"  # fmt: skip
    got = [line.split("\t") for line in ran.stdout.splitlines()]
    want = api_captions([run, tuned], photos)
    assert got == [[str(photo), caption] for photo, (caption, _) in zip(photos, want)]
    (tmp_path / "empty").mkdir()  # no photo at all: one line and exit 1, as `caption` says it
    empty = python(WITHOUT_TENSORFLOW, tmp_path / "light", tmp_path / "empty", cwd=tmp_path)
    assert empty.returncode == 1 and empty.stdout == ""
    assert empty.stderr.strip().startswith(f"Error: {tmp_path / 'empty'}: no photos found: ")


@pytest.mark.parametrize("decoder", ["updown", "transformer"])
def test_grid_decoders_export_to_both_formats(decoder, flickr8k_data, photos, tmp_path):
    """Up-Down and the Transformer go the way of the others: through their one-step function
    into the SavedModel's search and into step.onnx, captioning as the API does."""
    small = {"updown": {"attention_units": 8, "language_units": 16},
             "transformer": {"width": 8, "blocks": 2, "heads": 2, "feed_forward": 16,
                             "max_words": 12}}  # fmt: skip
    run = tiny_conv_run(flickr8k_data, tmp_path, 6, model={"decoder": decoder},
                        decode={"beam_size": 3, "max_length": 12},
                        text={"min_word_count": 1, "max_caption_words": 12}, **small)  # fmt: skip
    want = api_captions([run], photos)
    assert len({round(score, 4) for _, score in want}) > 1  # each photo is decoded as itself
    invoke("export", tmp_path / "saved", "--run", run)
    loaded = python(LOAD_SAVED_MODEL, tmp_path / "saved" / "1", *photos, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    got = json.loads(loaded.stdout.splitlines()[-1])
    assert got["captions"] == [caption for caption, _ in want]
    np.testing.assert_allclose(got["scores"], [score for _, score in want], rtol=1e-4)
    # Up-Down as an ensemble of two, as shipped: 14 state tensors, which step.onnx lists in the
    # sorted order of their names (next_state_10 before next_state_2).
    runs = [run, shutil.copytree(run, tmp_path / "twin")] if decoder == "updown" else [run]
    invoke("export", tmp_path / "light", *[a for r in runs for a in ("--run", r)], "--format",
           "onnx")  # fmt: skip
    ran = python(WITHOUT_TENSORFLOW, tmp_path / "light", *photos, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    got = [line.split("\t") for line in ran.stdout.splitlines()]
    want = api_captions(runs, photos) if len(runs) > 1 else want
    assert got == [[str(photo), caption] for photo, (caption, _) in zip(photos, want)]
    if decoder == "transformer":  # its caches hold 12 words: a longer caption is refused
        refused = invoke("export", tmp_path / "long", "--run", run, "--max-length", 13, code=1)
        assert "13 words is more than this decoder's transformer.max_words (12)" in refused.output


def test_an_export_in_the_way_is_kept_unless_forced(runs, tmp_path):
    run, _ = runs
    invoke("export", tmp_path / "e", "--run", run, "--format", "onnx")
    before = (tmp_path / "e" / "step.onnx").stat().st_mtime_ns
    refused = invoke("export", tmp_path / "e", "--run", run, "--format", "onnx", code=1)
    assert refused.output.strip() == f"Error: {tmp_path / 'e'}: already exists: give --force " \
        "to replace it"  # fmt: skip
    assert (tmp_path / "e" / "step.onnx").stat().st_mtime_ns == before
    invoke("export", tmp_path / "e", "--run", run, "--format", "onnx", "--force")
    assert (tmp_path / "e" / "step.onnx").stat().st_mtime_ns != before
    assert [p.name for p in tmp_path.iterdir()] == ["e"]  # nothing left beside it
    unknown = invoke("export", tmp_path / "x", "--format", "tflite", code=2)
    assert "'tflite' is not one of 'saved_model', 'onnx'" in unknown.output


def test_a_second_version_joins_the_first_for_tf_serving(runs, tmp_path):
    run, _ = runs
    invoke("export", tmp_path / "served", "--run", run, "--beam", 1)
    invoke("export", tmp_path / "served", "--run", run, "--version", 2)
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == [
        "1", "2", "captioner-export.json"]  # fmt: skip
    manifest = json.loads((tmp_path / "served" / "captioner-export.json").read_text())
    assert manifest["versions"] == [1, 2] and manifest["decoding"]["beam_size"] == 3


def test_caption_starts_from_a_cached_light_export_once_the_first_call_made_it(photos, tmp_path):
    """The shipped model, as a user meets it: the first caption runs TensorFlow and leaves a
    light export behind; the next ones need no TensorFlow and say the same."""
    photos = [CHELSEA, *photos[:3]]
    env = {**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache"), "CAPTIONER_FAST_START": "1"}
    first = python(CLI, "caption", *photos, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    light = tmp_path / "cache" / "light"
    # It says what it starts, once: where, what it costs, how to turn it off and undo it.
    (note,) = [line for line in first.stderr.splitlines() if line.startswith("fast start:")]
    assert f"into {light}" in note and "CAPTIONER_FAST_START=0" in note
    assert "captioner cache --clear" in note
    deadline = time.monotonic() + 240  # the export runs on after the first call has ended
    while not [p for p in light.glob("*-onnx-1") if p.is_dir()]:
        assert time.monotonic() < deadline, list(light.iterdir())
        time.sleep(1)
    second = python(CLI_WITHOUT_TENSORFLOW, "caption", *photos, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout  # the same captions, without TensorFlow
    assert "fast start:" not in second.stderr
    with pytest.MonkeyPatch.context() as patch:  # the Python API picks the same engine
        patch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
        patch.setenv("CAPTIONER_FAST_START", "1")
        from captioner import Captioner

        fast = Captioner.load(engine="auto")
        assert fast.engine_name == "onnx" and fast.describe()["engine"] == "onnx"
        assert fast.caption(photos) == [row.split("\t")[1] for row in first.stdout.splitlines()]
    listed = python(CLI, "cache", cwd=tmp_path, env=env)
    (exported,) = [p for p in light.glob("*-onnx-1") if p.is_dir()]
    # The decoders' 8-bit matrices stay 8-bit in the export: 54.9 MB with the shipped pair's two
    # fine-tuned encoders in float32; in float32 those matrices alone would take four times
    # their 8-bit bytes (21.7 MB in the package).
    assert sum(f.stat().st_size for f in exported.iterdir()) < 70e6
    assert f"light    {exported}" in listed.stdout and f"in {tmp_path / 'cache'}" in listed.stdout
    # A damaged export is set aside (the next TensorFlow call exports it again).
    (exported / "step.onnx").write_bytes(b"damaged")
    broken = python(CLI_WITHOUT_TENSORFLOW, "caption", photos[0], cwd=tmp_path, env=env)
    assert broken.returncode != 0 and not exported.exists()  # it went for TensorFlow
