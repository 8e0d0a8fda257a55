"""loss.png, drawn after every epoch from the run's history."""

from __future__ import annotations

import io
from pathlib import Path

from captioner.files import write_atomic


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    """loss.png: training and validation loss per epoch, and the learning rate beside them."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    loss_axis.plot(epochs, [h["loss"] for h in history], "o-", label="training loss")
    loss_axis.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy per word")
    rate_axis = loss_axis.twinx()
    rate_axis.plot(epochs, [h["learning_rate"] for h in history], "k:", label="learning rate")
    rate_axis.set_yscale("log")
    rate_axis.set_ylabel("learning rate")
    lines = loss_axis.get_legend_handles_labels()
    rates = rate_axis.get_legend_handles_labels()
    loss_axis.legend(lines[0] + rates[0], lines[1] + rates[1], loc="upper right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomic(path, buffer.getvalue())
