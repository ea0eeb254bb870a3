"""``finetime report``: a self-contained HTML page (with its PNGs beside it) from a result JSON."""

from __future__ import annotations

import html
import json
from pathlib import Path

from .errors import ConfigError

__all__ = ["write_report", "report_files"]

_FILES = {"sweep": ("report.html", "sweep.png"),
          "prediction": ("report.html", "curves.png", "spectrum.png", "gradients.png")}


def report_files(result: dict | str) -> tuple[str, ...]:
    """The files a report writes into its folder, for a result (or the kind ``"prediction"`` / ``"sweep"``)."""
    kind = result if isinstance(result, str) else ("sweep" if "rows" in result else "prediction")
    return _FILES[kind]


def _span(low, high) -> str:
    """``low-high`` of a band or interval of steps (``>T``: beyond the run, or never reached)."""
    return f"{'>T' if low is None else low}-{'>T' if high is None else high}"


def _table(rows: list[tuple]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{body}</table>"


def write_report(result: dict, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``report.html`` and its pictures into ``out``; returns the page's path."""
    from . import plots

    if not isinstance(result, dict) or "config" not in result or not ("predicted" in result or "rows" in result):
        raise ConfigError("not a finetime result: expected the JSON written by predict, validate or sweep --json")
    out = Path(out)
    page = out / "report.html"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report folder {out} is a file; give a folder path")
    taken = [name for name in report_files(result) if (out / name).exists()]
    if taken and not overwrite:
        raise ConfigError(f"{out} already holds {', '.join(taken)}; refusing to overwrite (pass --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    c = result["config"]
    parts = [f"<h1>finetime: {html.escape(str(c.get('model')))} on {html.escape(str(c.get('data')))}</h1>"]
    pics = []
    if "rows" in result:
        pics.append(("Predicted time to target over the grid", plots.plot_sweep_heatmap(result, out / "sweep.png")))
        rows = [("rank", *result["config"]["grid"], "steps", "seconds", "status")]
        for i, r in enumerate(result["rows"]):
            if "error" in r:
                rows.append((i + 1, *r["settings"].values(), "-", "-", r["error"]))
            else:
                rows.append((i + 1, *r["settings"].values(), r["steps_to_target"]["step"], r["seconds_to_target"],
                             r["status"]))
        parts.append(f"<p>Target training loss {result['target_loss']:.4g} ({html.escape(result['target_rule'])}).</p>")
        parts.append(_table(rows))
    else:
        pr = result["predicted"]
        pics.append(("Loss and accuracy", plots.plot_curves(result, out / "curves.png")))
        if "diagnostics" in result:
            pics.append(("Kernel spectrum", plots.plot_spectrum(result, out / "spectrum.png")))
            pics.append(("Gradients (paper, Fig. 3)", plots.plot_gradients(result, out / "gradients.png")))
        else:
            parts.append("<p>No kernel spectrum or gradient map: this result was written without its diagnostics "
                         "(results of finetime before they were always included); rerun "
                         "<code>finetime predict --json</code> or <code>--report</code> to draw them.</p>")
        rows = [("threshold", "predicted step", "5-95% band over batch orders", "90% model-error interval",
                 "seconds")]
        for k, v in pr["training_time"].items():
            rows.append((k, v["step"] if v["step"] is not None else "not reached", _span(v["low"], v["high"]),
                         _span(*v["interval"]) if v.get("interval") else "-", v.get("seconds")))
        if "error" in result:
            inside = {True: "yes", False: "no", None: "-"}
            rows = [r + (("real step", "error", "real in the interval") if i == 0 else
                         (result["error"][r[0]]["actual"], f"{100 * result['error'][r[0]]['relative']:.1f}%",
                          inside[result["error"][r[0]].get("in_interval")]))
                    for i, r in enumerate(rows)]
        parts.append(_table(rows))
        if pr.get("diverged"):
            parts.append("<p><b>Predicted to diverge.</b></p>")
        fs = pr.get("first_steps")
        if fs and fs.get("speed") is not None:
            parts.append(f"<p>Fitted to the first {fs['steps']} real steps (on a copy of the model): the run goes "
                         f"{fs['speed']:.2g}x as fast as the kernel predicts; the curves are time-warped to it.</p>")
    cs = result.get("cost_seconds", {})
    split = ", ".join(f"{name.replace('_', ' ')} {cs[key]} s" for key, name in
                      (("kernel", "kernel"), ("relinearization", "re-linearization"), ("simulation", "simulation"),
                       ("first_steps", "first real steps"), ("step_timing", "step timing")) if cs.get(key))
    parts.append(f"<p>Prediction cost: {cs.get('total', '?')} s ({split}).</p>")
    for title, p in pics:
        parts.append(f"<h2>{html.escape(title)}</h2><img src='{p.name}' alt='{html.escape(title)}'>")
    settings = {k: v for k, v in c.items() if k not in ("train_indices", "test_indices", "kernel")}
    parts.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(settings, indent=1, default=str)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:900px;margin:2em auto}table{border-collapse:collapse}"
             "td{border:1px solid #ccc;padding:2px 8px}img{max-width:100%}")
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>finetime report</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    return page
