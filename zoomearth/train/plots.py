"""Loss and reward curves of a training run, as one PNG (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["CURVE_KEYS", "plot_curves"]

#: Logged keys drawn, when present: loss, learning rate, reward (total and per function).
CURVE_KEYS: Final = ("loss", "reward", "reward_std", "grad_norm", "learning_rate")


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in history:
        value = record.get(key)
        if isinstance(value, int | float) and "step" in record:
            xs.append(float(record["step"]))
            ys.append(float(value))
    return xs, ys


def plot_curves(history: Sequence[dict[str, Any]], path: Path | str, *, title: str = "") -> Path:
    """Draw the logged curves of a run (one panel per quantity) and save them as PNG.

    Args:
        history: Log records (``trainer.state.log_history`` or ``metrics.jsonl`` lines), each
            with ``step``; keys drawn: ``loss``, ``learning_rate``, ``grad_norm``, ``reward``,
            ``reward_std`` and every ``rewards/<name>/mean``.
        path: Output PNG.
        title: Figure title.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVE_KEYS if _series(history, k)[0]]
    reward_keys = sorted(
        {k for r in history for k in r if k.startswith("rewards/") and k.endswith("/mean")}
    )
    panels: list[tuple[str, list[str]]] = [(k, [k]) for k in keys if k != "reward_std"]
    if reward_keys:
        panels.append(("rewards per function", reward_keys))
    if not panels:
        panels = [("no metrics logged", [])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), squeeze=False)
    for ax, (name, series) in zip(axes[:, 0], panels, strict=True):
        for key in series:
            xs, ys = _series(history, key)
            label = key.removeprefix("rewards/").removesuffix("/mean")
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
