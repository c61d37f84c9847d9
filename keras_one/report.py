"""Human-readable results: a text table and a PNG of learning curves."""


def format_table(rows, headers):
    """Formats rows (sequences of cells) as an aligned text table."""
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_learning_curves(curves, path, title=None):
    """Writes a PNG with accuracy and loss per epoch.

    Args:
        curves: dict mapping a run label (e.g. `"ONE"`) to its Keras history
            dict (`History.history`). Every `val_*accuracy` series is drawn
            in the left panel and the training `loss` in the right one.
        path: output PNG path.
        title: optional figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, history in curves.items():
        for key, values in sorted(history.items()):
            if key.startswith("val_") and key.endswith("accuracy"):
                name = key[len("val_") : -len("accuracy")].rstrip("_")
                name = name.replace("_", " ")
                series = f"{label} {name}".strip()
                epochs = range(1, len(values) + 1)
                left.plot(epochs, [100 * v for v in values], label=series)
        if "loss" in history:
            epochs = range(1, len(history["loss"]) + 1)
            right.plot(epochs, history["loss"], label=f"{label} loss")
    left.set(xlabel="epoch", ylabel="test accuracy (%)")
    right.set(xlabel="epoch", ylabel="training loss", yscale="log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
