"""Pictures (matplotlib, optional: ``pip install finetime[plot]``). Nothing here is imported by the core."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

__all__ = ["plot_validation"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: pip install 'finetime[plot]'") from exc
    return plt


def plot_validation(result: dict, path: str | Path) -> Path:
    """Predicted loss (mean and 5-95% band), the replay on the real batch order, and the real curve, with the
    training-time markers of each threshold; accuracy below."""
    plt = _pyplot()
    pr, ac = result["predicted"], result.get("actual")
    steps = list(range(len(pr["loss"])))
    nan = lambda v: [float("nan") if x is None else x for x in v]  # noqa: E731
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    ax.fill_between(steps, nan(pr["loss_low"]), nan(pr["loss_high"]), color="C0", alpha=0.2, label="predicted 5-95%")
    ax.plot(steps, nan(pr["loss"]), color="C0", label="predicted (mean)")
    if "replay" in pr:
        ax.plot(steps, nan(pr["replay"]["loss"]), color="C0", ls="--", lw=1, label="predicted, real batch order")
    if ac is not None:
        ax.plot(steps, nan(ac["loss"]), color="C3", label="real fine-tuning")
    for i, (key, v) in enumerate(pr["training_time"].items()):
        if v["step"] is not None:
            ax.axvline(v["step"], color="C0", ls=":", lw=0.8)
            ax.text(v["step"], 1.0, key, rotation=90, va="top", ha="right", fontsize=7, color="C0",
                    transform=ax.get_xaxis_transform())
        if ac is not None and ac["training_time"][key]["step"] is not None:
            ax.axvline(ac["training_time"][key]["step"], color="C3", ls=":", lw=0.8)
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    c = result["config"]
    opt = "GD" if not c["batch_size"] else f"SGD b={c['batch_size']}"
    ax.set_title(f"{c['model']} on {c['classes']}x{c['per_class']} images, {opt}, lr {c['lr']:g}, "
                 f"momentum {c['momentum']:g}", fontsize=9)
    ax2.plot(steps, nan(pr["accuracy"]), color="C0", label="predicted")
    if ac is not None:
        ax2.plot(steps, nan(ac["accuracy"]), color="C3", label="real")
    ax2.set_ylabel("training accuracy")
    ax2.set_xlabel("step")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
