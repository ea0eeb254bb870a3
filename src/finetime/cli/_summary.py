"""Readable one-screen summaries for the terminal."""

from __future__ import annotations

import sys

from ..config import FAR_FROM_LINEAR
from ..optim import describe
from ..relinearize import end_refreshed
from ..zoo import is_text_data

__all__ = ["print_summary", "print_validation", "print_sweep", "fmt_seconds"]


def _fmt_step(v: dict) -> str:
    if v["step"] is None:
        return "not reached within T"
    band = f" [{v['low'] if v['low'] is not None else '>T'}, {v['high'] if v['high'] is not None else '>T'}]"
    secs = f"  ~{fmt_seconds(v['seconds'])}" if v.get("seconds") is not None else ""
    iv = v.get("interval")
    model = f"  (90%: {_fmt_interval(iv)})" if iv else ""
    return f"step {v['step']}{band if v['low'] != v['high'] else ''}{model}{secs}"


def _fmt_interval(iv: list) -> str:
    return f"{iv[0]}-{iv[1]}" if iv[1] is not None else f"{iv[0]} to >T"


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s"


def _fmt_curve(curve: list, steps: int, every: int = 1) -> str:
    """The curve at six steps from 0 to ``steps`` (multiples of ``every``, where it was evaluated, and the last)."""
    marks = sorted({min(steps, every * round(t / every))
                    for t in (0, steps // 6, steps // 3, steps // 2, (2 * steps) // 3)} | {steps})
    return "  ".join(f"{t}: {curve[t]:.3f}" if curve[t] is not None else f"{t}: n/a" for t in marks)


def print_summary(result: dict, out=None, threads: str | None = None) -> None:
    out = out or sys.stdout
    c = result["config"]
    pr = result["predicted"]
    n = len(c["train_indices"]) if "train_indices" in c else c["classes"] * c["per_class"]
    km = c["kernel"]
    print(f"model      {c['model']}{' (head only)' if c['freeze_backbone'] else ''}, "
          f"{c['trained_weights']:,} trained weights", file=out)
    inputs = c.get("inputs") or ("texts" if is_text_data(c["data"]) else "images")  # results before torch datasets
    shape = {"texts": f"at most {c['max_length']} tokens", "images": f"{c['image_size']} px"}.get(
        inputs, f"inputs of shape {tuple(c.get('input_shape') or ())}")
    print(f"data       {n} {'samples' if inputs == 'tensors' else inputs}, {len(c['chosen_classes'])} classes "
          f"({', '.join(c['chosen_classes'])}), {shape}; {c['data_source']}", file=out)
    for note in c.get("data_notes") or ():
        print(f"note:      {note}", file=out)
    smoothing = f" with label smoothing {c['label_smoothing']:g}" if c.get("label_smoothing") else ""
    print(f"optimizer  {describe(c)}, {c['schedule']} schedule, {c['steps']} steps, {c['loss']} loss{smoothing}",
          file=out)
    summed = ", the sum-of-logits kernel x the identity" if km.get("outputs") == "sum" else ""
    print(f"kernel     {km['method']} ({100 * km['plan']['exact_weight_fraction']:.0f}% of weights exact), "
          f"{km['n']} x {km['classes']} outputs{summed}", file=out)
    print(f"predictor  {_fmt_predictor(pr, batch_statistics=c['bn'] == 'batch')}" + (f", {c['runs']} batch orders" if c["batch_size"] else ""), file=out)
    if threads:
        print(f"threads    {threads}", file=out)
    rt = result.get("runtime") or {}
    if "device" in rt:
        ranks = f", kernel sharded over {rt['ranks']} ranks" if rt.get("ranks", 1) > 1 else ""
        print(f"device     {rt['device']}, steps in {rt['precision']}{ranks}", file=out)
    print("", file=out)
    print(f"predicted training loss   {_fmt_curve(pr['loss'], c['steps'])}", file=out)
    print(f"predicted train accuracy  {_fmt_curve(pr['accuracy'], c['steps'])}", file=out)
    if "test_loss" in pr:
        print(f"predicted test loss       {_fmt_curve(pr['test_loss'], c['steps'])}", file=out)
    if pr["diverged"]:
        print(f"PREDICTED TO DIVERGE in {100 * pr['diverged_fraction']:.0f}% of runs: expect this learning rate to "
              f"blow up or not to train (stable learning rates are below ~{pr['max_stable_lr']:.3g} at the start)",
              file=out)
    elif pr["diverged_fraction"] > 0:
        print(f"warning: {100 * pr['diverged_fraction']:.0f}% of simulated runs diverge", file=out)
    gn, clip = pr.get("gradient_norm_start"), c.get("max_grad_norm")
    if gn is not None and clip is not None:
        print(f"clipping   a batch gradient's norm at the start is {gn:.3g} (root mean square over batches): "
              + (f"clipped to {clip:g} (x{clip / gn:.2g})" if gn > clip else
                 f"below {clip:g}, clipped only where the gradients grow"), file=out)
    rl = pr.get("relinearization")
    if rl:
        print(_fmt_relinearization(rl), file=out)
    fs = pr.get("first_steps")
    if fs:
        print(_fmt_first_steps(fs), file=out)
    ks = pr.get("kernel_samples")
    if ks:
        print(f"kernel on {ks['samples']} of {ks['of']} training samples (--kernel-samples); curves carried to all "
              f"{ks['of']} by the spectrum's extrapolation (step {c['steps']} = the subset's step "
              f"{ks['subset_steps_at_end']:g})", file=out)
    print("training time (steps; [5-95% band over batch orders]; (90% model-error interval)):", file=out)
    for k, v in pr["training_time"].items():
        print(f"  {k:<14} {_fmt_step(v)}", file=out)
    if "extrapolated" in pr:
        ex = pr["extrapolated"]
        steps = ", ".join(f"{k} step {v if v is not None else '-'}" for k, v in ex["steps"].items())
        print(f"extrapolated to {ex['n']} samples (from {ex['from_n']}; eigenvalues ~ k^-{ex['eigenvalue_power_law']['s']:.2f}): "
              f"{steps}", file=out)
    print(f"seconds per step (measured) {pr['seconds_per_step']:.4g}; all {c['steps']} steps "
          f"~{fmt_seconds(pr['total_seconds'])}", file=out)
    cs = result["cost_seconds"]
    relin = f", re-linearization {cs['relinearization']:.1f}" if cs.get("relinearization") else ""
    first = f", first real steps {cs['first_steps']:.1f}" if cs.get("first_steps") else ""
    print(f"prediction cost  {cs['total']:.1f} s (kernel {cs['kernel']:.1f}{relin}, simulation {cs['simulation']:.2f}"
          f"{first}, step timing {cs['step_timing']:.1f})", file=out)


def _fmt_first_steps(fs: dict) -> str:
    losses = [v for v in fs["losses"] if v is not None]
    head = (f"first {fs['steps']} real steps (on a copy of the model, --first-steps): loss "
            f"{losses[0]:.4g} -> {losses[-1]:.4g}" if losses else f"first {fs['steps']} real steps")
    if fs.get("speed") is not None:
        return (f"{head}; the run goes {fs['speed']:.2g}x as fast as the kernel predicts, and the curves are "
                "time-warped to it")
    return f"{head}; {fs.get('reason') or 'no warp'}"


def _fmt_predictor(pr: dict, batch_statistics: bool = False) -> str:
    name = pr.get("predictor", pr["method"])
    rl = pr.get("relinearization")
    if pr["method"] == "head":
        return f"{name} (the trained linear head simulated in weight space: exact)"
    if pr.get("preconditioned"):
        how = ", interpolated in time between refreshes" if rl is not None and rl.get("interpolated") else ""
        if end_refreshed(rl):
            where = ("at the pretrained weights and at the end of the run (end check), with P re-estimated there, "
                     "moving geometrically in time from the first to it")
        else:
            where = ("at the pretrained weights" if rl is None or rl["linear_regime"]
                     else f"at the pretrained weights, {rl['kernels']} refreshed along the predicted path with P "
                          f"re-estimated there{how}")
        return f"{name} (Adam on the preconditioned kernel J P J^T {where}; README 'Adam')"
    if rl is None and batch_statistics and pr.get("first_steps") and name not in ("linear", "paper"):
        return (f"{name} (one kernel at the pretrained weights, fitted to the first real steps: with batch "
                "statistics the kernel is not refreshed along the path)")
    if rl is None:
        return {"linear": "linear (exact simulation, one kernel at the pretrained weights)",
                "paper": f"paper ({pr['method'].upper()} with the effective learning rate, one kernel)"}.get(name, name)
    if rl["linear_regime"]:
        return f"{name} (linearity check{'s' if rl.get('end_check') else ''} passed: one kernel)"
    if end_refreshed(rl):
        return (f"{name} (linearity check passed; the kernel refreshed at the end of the run and moving geometrically "
                "in time from the pretrained weights' to it)")
    how = ""
    if rl.get("interpolated"):
        n, of = rl.get("interpolated_intervals") or rl["kernels"], rl["kernels"]
        across = "between them" if n >= of else f"across {n} of the {of} intervals (stepwise across the others)"
        adverb = {"geometric": "geometrically"}.get(rl.get("interpolation"), "linearly")
        how = f", the kernel moving {adverb} in time {across}"
    return f"{name} ({rl['kernels']} kernels refreshed along the predicted path{how})"


def _gap_pct(gap: float) -> str:
    """A loss gap as a percentage, with a decimal below 10% (Adam's check tolerance is 0.1%)."""
    return f"{100 * gap:.0f}%" if gap >= 0.1 else f"{100 * gap:.2g}%"


def _fmt_relinearization(rl: dict) -> str:
    gaps = rl["loss_gaps"]
    first = rl["checkpoints"][0] if rl["checkpoints"] else None
    end = rl.get("end_check")
    if end is not None:
        gap = "-" if end["gap"] is None else f"{100 * end['gap']:.0f}%"
        seen = (f"linearity check at step {first}: the network there has the linear model's loss to within "
                f"{100 * gaps[0]:.1f}%; end check at step {end['step']}: off by {gap} of the predicted loss decrease")
        if not end["refreshed"]:
            return f"{seen}, one kernel kept"
        sub = rl.get("refresh_samples")
        return (f"{seen}, kernel refreshed there" + (f" on {sub} samples, carried to all" if sub else "")
                + f" (trace x{rl['trace_ratios'][0]:.2g}), moving geometrically in time from the first")
    if rl["linear_regime"]:
        return (f"linearity check at step {first}: the network there has the linear model's loss to within "
                f"{100 * gaps[0]:.1f}%, one kernel kept")
    if not gaps and not rl["kernels"]:
        return (f"no linearity check: the simulated runs diverged before step {first}" if first is not None
                else "no linearity check")
    done = rl["checkpoints"][: rl["kernels"]]
    gap = f"network vs linear model loss gap {_gap_pct(gaps[0])} at step {first}; " if gaps else ""
    sub = rl.get("refresh_samples")
    more = f"{rl['kernels']} more kernels" + (f" on {sub} samples each, carried to all" if sub else "")
    line = (f"re-linearized at steps {', '.join(map(str, done))} ({gap}{more}; kernel trace "
            f"x{', x'.join(f'{r:.2g}' for r in rl['trace_ratios'])})")
    if rl.get("sharpness_ratios"):
        ratios = ", x".join("-" if r is None else f"{r:.2g}" for r in rl["sharpness_ratios"])
        line += f"; stability cap: sharpness before it x{ratios} of the stable limit"
    if gaps and gaps[0] >= FAR_FROM_LINEAR:
        line += (f"\nwarning: at step {first} the network's loss is {100 * gaps[0]:.0f}% away from the linear model's: "
                 "far from linear, the real run may differ strongly (BENCHMARKS.md, section 1)")
    return line


def print_validation(result: dict, out=None) -> None:
    out = out or sys.stdout
    c, pr, ac = result["config"], result["predicted"], result["actual"]
    every = ac.get("eval_every", 1)
    print(f"real training loss        {_fmt_curve(ac['loss'], c['steps'], every)}", file=out)
    n = len(c["train_indices"]) if "train_indices" in c else None
    part = ac.get("eval_samples")
    if every > 1 or (part is not None and n is not None and part < n):
        where = f" on {part} of the {n} training samples" if part is not None and n and part < n else ""
        when = f" every {every} steps (its training times late by less than {every})" if every > 1 else ""
        print(f"  (the real loss evaluated{when}{where})", file=out)
    elif ac.get("eval_seconds", 0) > ac["train_seconds"]:
        print(f"note: evaluating the real run's loss on the whole training set after every step took "
              f"{fmt_seconds(ac['eval_seconds'])}, more than its training ({fmt_seconds(ac['train_seconds'])}); "
              "--eval-every K and --eval-samples M make it cheaper", file=out)
    if ac["diverged"]:
        print("REAL RUN DIVERGED", file=out)
    print("training time (steps)     predicted   same order   real     error   real in the 90% interval", file=out)
    for key, e in result["error"].items():
        rep = result.get("error_replay", {}).get(key, {}).get("predicted")
        fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
        iv = pr["training_time"].get(key, {}).get("interval")
        inside = "-" if e.get("in_interval") is None else "yes" if e["in_interval"] else "no"
        span = f" ({_fmt_interval(iv)})" if iv else ""
        print(f"  {key:<22}  {fmt(e['predicted']):>9}   {fmt(rep):>10}   {fmt(e['actual']):>5}   "
              f"{100 * e['relative']:5.1f}%   {inside}{span}", file=out)
    if "error_replay" in result:
        print("  (same order: the predictor replayed on the real run's batch order, with the prediction's "
              "linearity-check decision and first real steps; the gap to 'predicted' is batch-order noise)", file=out)
    print(f"real fine-tuning {fmt_seconds(ac['train_seconds'])} ({ac['seconds_per_step']:.4g} s/step; predicted "
          f"{pr['seconds_per_step']:.4g}); prediction cost {result['cost_seconds']['total']:.1f} s = "
          + (f"1/{result['cost_ratio']:.1f} of the training" if result["cost_ratio"] >= 1
             else f"{1 / max(result['cost_ratio'], 1e-9):.1f}x the training (a small run: just train it)"), file=out)


def print_sweep(result: dict, out=None, limit: int = 30, threads: str | None = None) -> None:
    out = out or sys.stdout
    c = result["config"]
    rows = result["rows"]
    print(f"sweep      {len(rows)} configurations from one kernel ({c['kernel']['method']}, "
          f"{c['kernel']['n']} x {c['kernel']['classes']} outputs)", file=out)
    print(f"target     training loss {result['target_loss']:.4g} ({result['target_rule']})", file=out)
    grid = c.get("grid", {})
    fixed = [c.get("optimizer", "sgd")]
    if "schedule" not in grid:
        fixed.append(f"{c['schedule']} schedule")
    if "steps" not in grid:
        fixed.append(f"{c['steps']} steps")
    if c.get("max_grad_norm") is not None:
        fixed.append(f"gradients clipped to norm {c['max_grad_norm']:g}")
    if c.get("label_smoothing"):
        fixed.append(f"{c['loss']} loss with label smoothing {c['label_smoothing']:g}")
    print(f"fixed      {', '.join(fixed)}", file=out)
    if threads:
        print(f"threads    {threads}", file=out)
    keys = list(c["grid"])
    head = "  ".join(f"{k:>12}" for k in keys)
    print(f"\n rank  {head}  {'steps':>7}  {'5-95%':>11}  {'time':>9}  status", file=out)
    for i, r in enumerate(rows[:limit]):
        vals = "  ".join(f"{str(r['settings'][k]):>12}" for k in keys)
        if "error" in r:
            print(f" {'-':>4}  {vals}  invalid: {r['error']}", file=out)
            continue
        tt = r["steps_to_target"]
        band = f"[{tt['low'] if tt['low'] is not None else '>T'}, {tt['high'] if tt['high'] is not None else '>T'}]"
        secs = fmt_seconds(r["seconds_to_target"]) if r["seconds_to_target"] is not None else "-"
        step = tt["step"] if tt["step"] is not None else "-"
        print(f" {i + 1:>4}  {vals}  {step:>7}  {band:>11}  {secs:>9}  {r['status']}", file=out)
    if len(rows) > limit:
        print(f" ... {len(rows) - limit} more in the JSON", file=out)
    cs = result["cost_seconds"]
    print(f"\nprediction cost  {cs['total']:.1f} s (kernel {cs['kernel']:.1f}, simulation {cs['simulation']:.1f}, "
          f"step timing {cs['step_timing']:.1f})", file=out)
