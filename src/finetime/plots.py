"""Pictures (matplotlib, optional: ``pip install finetime[plot]``). Nothing here is imported by the core."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .optim import describe

__all__ = ["plot_validation", "plot_curves", "plot_spectrum", "plot_gradients", "plot_sweep_heatmap"]


def task_size(c: dict) -> str:
    """``5x20 images`` (classes x per class), or ``3217 texts`` where every sample of a class was taken (``all``),
    from a result's ``config``."""
    noun = {"tensors": "samples"}.get(c.get("inputs", "images"), c.get("inputs", "images"))
    if isinstance(c["classes"], int) and isinstance(c["per_class"], int):
        return f"{c['classes']}x{c['per_class']} {noun}"
    return f"{len(c.get('train_indices') or [])} {noun}"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: pip install 'finetime[plot]'") from exc
    return plt


def _nan(v):
    """JSON curve (``None`` for missing points) -> floats for matplotlib."""
    return [float("nan") if x is None else x for x in v]


def _save(fig, path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return Path(path)


def _evaluated(steps: list, values: list) -> tuple[list, list]:
    """The steps where a real curve has a value and those values (a curve evaluated every few steps is a line
    through them, not points apart)."""
    kept = [(t, v) for t, v in zip(steps, values) if v is not None and v == v]
    return [t for t, _ in kept], [v for _, v in kept]


def plot_validation(result: dict, path: str | Path) -> Path:
    """Predicted loss (mean and 5-95% band), the replay on the real batch order, and the real curve, with the
    training-time markers of each threshold; accuracy below."""
    plt = _pyplot()
    pr, ac = result["predicted"], result.get("actual")
    steps = list(range(len(pr["loss"])))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    ax.fill_between(steps, _nan(pr["loss_low"]), _nan(pr["loss_high"]), color="C0", alpha=0.2, label="predicted 5-95%")
    ax.plot(steps, _nan(pr["loss"]), color="C0", label="predicted (mean)")
    if "replay" in pr:
        ax.plot(steps, _nan(pr["replay"]["loss"]), color="C0", ls="--", lw=1, label="predicted, real batch order")
    if ac is not None:  # where it was evaluated (every step, or every --eval-every)
        ax.plot(*_evaluated(steps, ac["loss"]), color="C3", label="real fine-tuning",
                marker="." if ac.get("eval_every", 1) > 1 else None)
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
    ax.set_title(f"{c['model']} on {task_size(c)}, {describe(c, short=True)}", fontsize=9)
    ax2.plot(steps, _nan(pr["accuracy"]), color="C0", label="predicted")
    if ac is not None:
        ax2.plot(*_evaluated(steps, ac["accuracy"]), color="C3", label="real")
    ax2.set_ylabel("training accuracy")
    ax2.set_xlabel("step")
    ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(result: dict, path: str | Path) -> Path:
    """Predicted training loss and accuracy with bands and training-time markers (and test curves, and the real
    run when the result comes from validate)."""
    if "actual" in result:
        return plot_validation(result, path)
    plt = _pyplot()
    pr = result["predicted"]
    steps = list(range(len(pr["loss"])))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    ax.fill_between(steps, _nan(pr["loss_low"]), _nan(pr["loss_high"]), color="C0", alpha=0.2,
                    label="training, 5-95%")
    ax.plot(steps, _nan(pr["loss"]), color="C0", label="training loss (predicted)")
    if "test_loss" in pr:
        ax.fill_between(steps, _nan(pr["test_loss_low"]), _nan(pr["test_loss_high"]), color="C2", alpha=0.15)
        ax.plot(steps, _nan(pr["test_loss"]), color="C2", label="test loss (predicted)")
    for key, v in pr["training_time"].items():
        if v["step"] is not None:
            ax.axvline(v["step"], color="C0", ls=":", lw=0.8)
            ax.text(v["step"], 1.0, key, rotation=90, va="top", ha="right", fontsize=7, color="C0",
                    transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    c = result["config"]
    ax.set_title(f"{c['model']}, {task_size(c)}, {describe(c, short=True)}", fontsize=9)
    ax2.fill_between(steps, _nan(pr["accuracy_low"]), _nan(pr["accuracy_high"]), color="C0", alpha=0.2)
    ax2.plot(steps, _nan(pr["accuracy"]), color="C0", label="training")
    if "test_accuracy" in pr:
        ax2.plot(steps, _nan(pr["test_accuracy"]), color="C2", label="test")
    ax2.set_ylabel("accuracy")
    ax2.set_xlabel("step")
    ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_spectrum(result: dict, path: str | Path) -> Path:
    plt = _pyplot()
    sp = result["diagnostics"]["spectrum"]
    ev = sp["eigenvalues"]
    ks = list(range(1, len(ev) + 1))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(ks, [max(v, 1e-30) for v in ev], ".", ms=3, label="eigenvalues of Theta / N")
    pl = sp["power_law"]
    if pl["c"] == pl["c"]:  # not NaN
        ax.loglog(ks, [pl["c"] * k ** (-pl["s"]) for k in ks], "-", color="C3", lw=1,
                  label=f"fit c k^-s, s = {pl['s']:.2f} (ranks {pl['ranks'][0]}-{pl['ranks'][1]})")
    ax.set_xlabel("rank k")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=8)
    ax.set_title("kernel spectrum at the pretrained weights", fontsize=9)
    return _save(fig, path)


def plot_gradients(result: dict, path: str | Path) -> Path:
    """Per-sample loss gradients in 2-D (PCA, and t-SNE of 5 PCs when available), coloured by class and by the
    predicted per-sample convergence step (paper, Fig. 3)."""
    plt = _pyplot()
    g = result["diagnostics"]["gradients"]
    views = [("PCA", g["pca"])] + ([("t-SNE of 5 PCs", g["tsne"])] if "tsne" in g else [])
    fig, axes = plt.subplots(len(views), 2, figsize=(9, 4 * len(views)), squeeze=False)
    labels = g["labels"]
    names = result["config"].get("chosen_classes") or [str(i) for i in range(max(labels) + 1)]
    steps = result["config"]["steps"]
    conv = [s if s is not None else steps for s in g["convergence_step"]]
    for row, (title, pts) in zip(axes, views):
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        for ci in sorted(set(labels)):
            sel = [i for i, lab in enumerate(labels) if lab == ci]
            row[0].scatter([xs[i] for i in sel], [ys[i] for i in sel], s=14, label=names[ci], color=f"C{ci}")
        row[0].set_title(f"{title}: gradients by class", fontsize=9)
        row[0].legend(fontsize=7)
        sc = row[1].scatter(xs, ys, s=14, c=conv, cmap="viridis")
        fig.colorbar(sc, ax=row[1], label="predicted convergence step (eps 0.1)")
        row[1].set_title(f"{title}: by predicted convergence time", fontsize=9)
    return _save(fig, path)


def plot_sweep_heatmap(result: dict, path: str | Path) -> Path:
    """Learning rate x batch size; colour = predicted seconds to the target (best over the other swept settings)."""
    import math

    plt = _pyplot()
    rows = [r for r in result["rows"] if "error" not in r]
    lrs = sorted({r["settings"].get("lr", result["config"]["lr"]) for r in rows})
    bss = sorted({r["settings"].get("batch_size", result["config"]["batch_size"]) for r in rows})
    grid = [[math.nan] * len(lrs) for _ in bss]
    for r in rows:
        i = bss.index(r["settings"].get("batch_size", result["config"]["batch_size"]))
        j = lrs.index(r["settings"].get("lr", result["config"]["lr"]))
        s = r["seconds_to_target"]
        if s is not None and (math.isnan(grid[i][j]) or s < grid[i][j]):
            grid[i][j] = s
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(lrs), 1.2 + 0.7 * len(bss)))
    im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    for i in range(len(bss)):
        for j in range(len(lrs)):
            v = grid[i][j]
            light = math.isnan(v) or im.norm(v) < 0.5  # viridis_r is light (yellow) at the fast end
            ax.text(j, i, "x" if math.isnan(v) else f"{v:.3g}s", ha="center", va="center", fontsize=8,
                    color="k" if light else "w")
    ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
    ax.set_yticks(range(len(bss)), ["full" if b == 0 else str(b) for b in bss])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("batch size")
    others = sorted({k for r in rows for k in r["settings"]} - {"lr", "batch_size"})
    best = f"\nbest over {', '.join(others)}" if others else ""
    ax.set_title(f"predicted seconds to loss {result['target_loss']:.3g} (x: not reached / diverges){best}", fontsize=9)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)
