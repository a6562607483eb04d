"""PNG plots of a run: per-layer loss curves, accuracy per epoch, a grid of predictions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def plot_layer_losses(rows: Sequence[dict], path) -> Path:
    """Each layer's mean FF loss per epoch (log scale) from metrics.jsonl rows."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in rows]
    losses = np.array([r["layer_loss"] for r in rows])
    for layer in range(losses.shape[1]):
        ax.plot(epochs, losses[:, layer], marker=".", label=f"layer {layer + 1}")
    ax.set(xlabel="epoch", ylabel="FF loss (mean over minibatches)", yscale="log",
           title="Per-layer loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy(rows: Sequence[dict], path) -> Path:
    """Evaluation accuracy per epoch (combined and per layer) and each layer's own
    pos/neg training accuracy."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    # A network with no label in the input predicts with its softmax readout (its
    # per-layer figures are linear probes): there is no goodness-readout curve.
    goodness = rows and rows[-1].get("eval_prediction", "goodness") == "goodness"
    evald = [r for r in rows if r.get("eval_accuracy") is not None]
    if evald and goodness:
        ep = [r["epoch"] for r in evald]
        ax1.plot(ep, [100 * r["eval_accuracy"] for r in evald], marker="o", lw=2,
                 label="goodness readout")
        per = np.array([r["eval_accuracy_per_layer"] for r in evald])
        for layer in range(per.shape[1]):
            ax1.plot(ep, 100 * per[:, layer], ls="--", label=f"layer {layer + 1} alone")
    elif evald and evald[-1].get("eval_accuracy_per_layer"):
        per = np.array([r["eval_accuracy_per_layer"] for r in evald])
        for layer in range(per.shape[1]):
            ax1.plot([r["epoch"] for r in evald], 100 * per[:, layer], ls="--",
                     label=f"layer {layer + 1}'s linear probe")
    if evald:
        ax1.set(title=f"{evald[-1].get('eval_split', 'eval')} accuracy")
    soft = [r for r in rows if r.get("eval_accuracy_softmax") is not None]
    if soft:
        ax1.plot([r["epoch"] for r in soft], [100 * r["eval_accuracy_softmax"] for r in soft],
                 color="black", lw=1, label="softmax readout")
    joint = [r for r in evald if r.get("eval_accuracy_joint_by_score_layers")]
    for name, ls in (("all", ":"), ("all_but_first", "-.")):
        if joint and name in joint[0]["eval_accuracy_joint_by_score_layers"]:
            ax1.plot([r["epoch"] for r in joint],
                     [100 * r["eval_accuracy_joint_by_score_layers"][name] for r in joint],
                     color="black", lw=2, ls=ls, marker="s",
                     label=f"joint readout ({name.replace('_', ' ')})")
    ax1.set(xlabel="epoch", ylabel="accuracy (%)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    epochs = [r["epoch"] for r in rows]
    pos = np.array([r["layer_acc_pos"] for r in rows])
    neg = np.array([r["layer_acc_neg"] for r in rows])
    for layer in range(pos.shape[1]):
        (line,) = ax2.plot(epochs, 100 * pos[:, layer], label=f"layer {layer + 1} pos")
        ax2.plot(epochs, 100 * neg[:, layer], ls=":", color=line.get_color(),
                 label=f"layer {layer + 1} neg")
    ax2.set(xlabel="epoch", ylabel="% on the right side of theta",
            title="Per-layer training accuracy")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    return _save(fig, path)


def plot_predictions(x_NxD: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                     class_names: Sequence[str], path, *, count: int = 36) -> Path:
    """A grid of the first `count` examples, flat square grey images (N, D) or images
    (N, H, W, 1 or 3), titled predicted / true; wrong predictions in red."""
    count = min(count, len(x_NxD))
    x = np.asarray(x_NxD)
    if x.ndim == 2:  # flat pixels of square grey images
        side = int(round(math.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise ValueError(f"features of width {x.shape[1]} are not square images.")
        x = x.reshape(len(x), side, side, 1)
    cols = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / cols))
    # One image of all tiles on one axes, with the titles as text over it: a subplot per
    # example made this plot cost over a second per run (laying out 36 axes).
    h, w = x.shape[1:3]
    gap, head = max(1, w // 5), max(1, h // 3)  # white between tiles; room for a title
    sheet = np.ones((rows * (head + h) + gap, cols * (w + gap) + gap, 3))
    fig = plt.figure(figsize=(1.6 * cols, 1.8 * rows))
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.95))
    ax.axis("off")
    for i in range(count):
        r, c = divmod(i, cols)
        top, left = r * (head + h) + head, c * (w + gap) + gap
        sheet[top:top + h, left:left + w] = _tile(x[i])
        ok = int(y_pred[i]) == int(y_true[i])
        ax.text(left + w / 2, top - 1, f"{class_names[int(y_pred[i])]} / "
                f"{class_names[int(y_true[i])]}", ha="center", va="bottom", fontsize=7,
                color="black" if ok else "red")
    ax.imshow(sheet, interpolation="nearest")
    fig.suptitle("predicted / true (wrong in red)", fontsize=9)
    return _save(fig, path, tight=False)  # laid out by hand above


def _tile(img_HxWxC: np.ndarray) -> np.ndarray:
    """One example as an (H, W, 3) RGB tile in [0, 1]: grey images stretched to their own
    range (as imshow shows a lone grey image), colour images clipped to [0, 1]."""
    img = np.asarray(img_HxWxC, dtype=np.float64)
    if img.shape[-1] == 3:
        return np.clip(img, 0.0, 1.0)
    grey = img[..., 0]
    lo, hi = grey.min(), grey.max()
    grey = (grey - lo) / (hi - lo) if hi > lo else np.zeros_like(grey)
    return np.repeat(grey[..., None], 3, axis=-1)


def _save(fig, path, *, tight: bool = True) -> Path:
    path = Path(path)
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if tight:
        fig.tight_layout()
    from ffjax.record import replace_atomically  # record imports this module
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_compare_accuracy(models: Sequence[dict], path) -> Path:
    """Test error against training time (compilation excluded) for each benchmarked model
    (benchmarks.compare records)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        t = [r["train_seconds_cumulative"] for r in m["epochs"]]
        ax.plot(t, [100 * (1 - r["test_accuracy"]) for r in m["epochs"]], marker="o",
                label=m["model"])
        if "test_accuracy_softmax" in m["epochs"][0]:
            ax.plot(t, [100 * (1 - r["test_accuracy_softmax"]) for r in m["epochs"]],
                    marker=".", ls="--", label=f"{m['model']} (softmax readout)")
    ax.set(xlabel="training seconds (compilation excluded)", ylabel="test error (%)",
           xscale="log", yscale="log", title="Test error against training time")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_scaling(scaling: dict, path) -> Path:
    """Seconds per epoch against width, depth and batch size, one panel each."""
    axes_names = [k for k, v in scaling.items() if v]
    fig, axes = plt.subplots(1, len(axes_names), figsize=(5 * len(axes_names), 4),
                             squeeze=False)
    for ax, axis in zip(axes[0], axes_names):
        points = scaling[axis]
        for model in dict.fromkeys(p["model"] for p in points):
            mine = [p for p in points if p["model"] == model]
            xs = [{"width": p["hidden"][0], "depth": len(p["hidden"]),
                   "batch_size": p["batch_size"]}[axis] for p in mine]
            ax.plot(xs, [p["epoch_seconds_median"] for p in mine], marker="o", label=model)
        ax.set(xlabel=axis, ylabel="seconds per epoch", yscale="log",
               xscale="log" if axis != "depth" else "linear",
               title=f"Epoch time vs {axis}")
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
