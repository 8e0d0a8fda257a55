"""The whole path from photo bytes to words as one TensorFlow SavedModel: image decoding
(captioner.export.photos), every distinct encoder, every ensemble member's decoder, the run's
search with its settings, and the vocabulary. Signature `serving_default`: `images`, a 1-D
string tensor of encoded photos -> `captions` (strings) and `scores` (log P / length **
length_penalty, float32). Needs TensorFlow only: nothing of captioner runs when it is loaded."""

from __future__ import annotations

from pathlib import Path

from captioner.config import DecodeConfig
from captioner.data.cleaning import ends_spaceless, is_spaceless
from captioner.data.text import END_ID, PAD_ID, SPECIAL_TOKENS, START_ID, Vocabulary
from captioner.model.ensembles import decoder_steps, encoder_runs
from captioner.model.rundir import Run


def words_of(ids, vocabulary: Vocabulary):
    """ids (B, L) -> (B,) strings: the tokens up to the first <end>, as Vocabulary.decode reads
    them, joined as Vocabulary.join joins them. Graph code."""
    import tensorflow as tf

    ended = tf.cumsum(tf.cast(tf.equal(ids, END_ID), tf.int32), axis=1) > 0
    keep = ~ended & tf.not_equal(ids, PAD_ID) & tf.not_equal(ids, START_ID)
    tokens = tf.ragged.boolean_mask(tf.gather(tf.constant(vocabulary.words), ids), keep)
    if vocabulary.tokenizer == "words":
        return tf.strings.reduce_join(tokens, axis=1, separator=" ")
    # No space next to a character of a script written without spaces (join_tokens): none
    # before token i when it starts with one or token i - 1 ends with one (or i is the first).
    starts, ends = (tf.constant(flags) for flags in spaceless_ends(vocabulary.words))
    kept = tf.ragged.boolean_mask(ids, keep)
    first = tf.RaggedTensor.from_tensor(tf.ones([tf.shape(ids)[0], 1], tf.bool))
    glued = tf.gather(starts, kept) | tf.concat([first, tf.gather(ends, kept)], axis=1)[:, :-1]
    space = tf.where(glued.flat_values, "", " ")
    tokens = tokens.with_flat_values(tf.strings.join([space, tokens.flat_values]))
    return tf.strings.reduce_join(tokens, axis=1)


def spaceless_ends(words: list[str]) -> tuple[list[bool], list[bool]]:
    """For each token: whether it starts, and whether it ends, with a character of a script
    written without spaces (the special tokens neither)."""
    starts = [i >= len(SPECIAL_TOKENS) and is_spaceless(w[0]) for i, w in enumerate(words)]
    ends = [i >= len(SPECIAL_TOKENS) and ends_spaceless(w) for i, w in enumerate(words)]
    return starts, ends


def caption_function(runs: list[Run], decoding: DecodeConfig):
    """Returns (f, models): f(images (N,) string) -> {"captions", "scores"}, graph code over the
    Keras `models` it uses (the encoders, then the decoders), which must stay alive until
    their weights are frozen into the graph."""
    import tensorflow as tf

    from captioner.export.photos import photo_pixels
    from captioner.model.search import make_search

    size = runs[0].encoder.input_size
    encoders = [run.load_encoder() for run in encoder_runs(runs)[0]]
    steps = decoder_steps(runs)
    decoders = [member.model for member in getattr(steps, "members", [steps])]
    search = make_search(steps, len(runs[0].vocabulary), decoding)
    pixels_spec = tf.TensorSpec([size, size, 3], tf.float32)

    def caption(images):
        pixels = tf.map_fn(lambda data: photo_pixels(data, size), images,
                           fn_output_signature=pixels_spec)  # fmt: skip
        count = tf.shape(images)[0]
        features = [
            tf.reshape(encoder(pixels, training=False), [count, -1]) for encoder in encoders
        ]
        ids, scores = search(tf.concat(features, axis=1))
        return {"captions": words_of(ids, runs[0].vocabulary), "scores": scores}

    return caption, encoders + decoders


def write_saved_model(runs: list[Run], decoding: DecodeConfig, folder: Path) -> None:
    """The SavedModel of `runs` decoding with `decoding` into `folder`, traced on the CPU (a
    graph traced on a GPU would carry cuDNN kernels that a CPU cannot run).

    The weights are frozen into the graph as constants, and those the runs store in 8 bits stay
    8-bit there (captioner.export.int8_weights: the shipped pair's SavedModel is about the
    package plus its encoder, not 107 MB of float32); the graph is saved with its one
    signature, as TF Serving and tf.saved_model.load read it."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    from captioner.export.int8_weights import int8_matrices, keep_int8_in_graph

    with tf.device("/cpu:0"):
        caption, models = caption_function(runs, decoding)  # alive until their weights are frozen
        signature = [tf.TensorSpec([None], tf.string, name="images")]
        traced = tf.function(caption, input_signature=signature).get_concrete_function()
        frozen = convert_variables_to_constants_v2(traced)
    del models
    graph_def = frozen.graph.as_graph_def()
    keep_int8_in_graph(graph_def, int8_matrices(runs))
    names = sorted(traced.structured_outputs)  # flattened in the order of their keys
    outputs = dict(zip(names, [tensor.name for tensor in frozen.outputs]))
    _save_graph(graph_def, frozen.inputs[0].name, outputs, folder)


def _save_graph(graph_def, images: str, outputs: dict[str, str], folder: Path) -> None:
    """A SavedModel of one graph without variables and its `serving_default` signature."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        signature = tf.compat.v1.saved_model.predict_signature_def(
            {"images": graph.get_tensor_by_name(images)},
            {key: graph.get_tensor_by_name(name) for key, name in outputs.items()},
        )
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(folder))
            builder.add_meta_graph_and_variables(
                session, [tf.saved_model.SERVING],
                signature_def_map={"serving_default": signature}, strip_default_attrs=True,
            )  # fmt: skip
            builder.save()
