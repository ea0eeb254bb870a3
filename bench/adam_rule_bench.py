"""Adam's approximation alone, without the linearization: the weight-space rule on the real network.

    .venv/bin/python bench/adam_rule_bench.py      # writes bench/results/adam_rule.json (about 12 minutes)

finetime predicts Adam by two approximations at once (README, "Adam"): (1) Adam's per-weight ``1 / sqrt(v)`` replaced
by a fixed preconditioner ``P`` measured at ``w0`` (row x column for linear maps) times one scalar ``rho_t`` from the
``b2`` average of ``g^T P g``; (2) the network replaced by its linearization. This bench separates them. On text
cells of ``bench/results/text.jsonl`` (AdamW lr 3e-5 and 1e-4, batch 16, both seeds), the rule of (1) is run on the
*real* network, step by step on the real run's batch order (``w <- (1 - lr wd) w - lr rho P m_hat``, ``m`` the
``b1`` average of the real minibatch gradients): with ``P`` row x column (what finetime uses) and with ``P`` weight
by weight (exact diagonal). Their whole-training-set loss curves are scored against the stored real AdamW run at eps
0.4, 0.1 and 0.01 over the first ``STEPS[lr]`` steps (which cover TT(0.01) of the real runs), beside the stored
one-kernel (``linear``) and default (``adaptive``) predictions of the same cells.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
EPS = ("eps=0.4", "eps=0.1", "eps=0.01")
STEPS = {1e-4: 40, 3e-5: 80}


def rule_curve(cfg, task, scales: dict, plan, steps: int) -> list[float]:
    """Whole-training-set losses of steps ``0..steps`` under the fixed-``P`` Adam rule on the real network."""
    from finetime.kernel import parameter_preconditioner
    from finetime.losses import per_sample_loss
    from finetime.network import eval_mode
    from suite import prepare_model

    opt = cfg.optimizer
    model = prepare_model(cfg)
    named = dict(model.named_parameters())
    params = [named[n] for n in task.trained]
    prec = [parameter_preconditioner(scales[n], named[n].shape) for n in task.trained]
    moments = [torch.zeros_like(p) for p in params]
    x, y = task.data.x, task.data.y
    lrs = opt.lr_table(cfg.steps).tolist()
    b1, b2 = opt.betas

    def loss() -> float:
        with torch.no_grad(), eval_mode(model):
            return float(per_sample_loss(model(x), y, cfg.objective).mean())

    out, q_avg, q_ref = [loss()], 0.0, None
    for t in range(steps):
        idx, w = plan.indices[0, t], plan.weights[0, t]
        with eval_mode(model):
            batch = (per_sample_loss(model(x[idx]), y[idx], cfg.objective) * w.to(torch.float32)).sum()
        grads = torch.autograd.grad(batch, params)
        q = sum(float((g * p * g).sum()) for g, p in zip(grads, prec))
        q_ref = q if q_ref is None else q_ref
        q_avg = b2 * q_avg + (1 - b2) * q
        rho = (q_ref / (q_avg / (1 - b2 ** (t + 1)))) ** 0.5
        with torch.no_grad():
            for p, g, pp, m in zip(params, grads, prec, moments):
                m.mul_(b1).add_(g, alpha=1 - b1)
                p.mul_(1 - lrs[t] * opt.weight_decay).sub_(lrs[t] * rho * pp * m / (1 - b1 ** (t + 1)))
        out.append(loss())
    return out


def main() -> int:
    from finetime.batches import batch_plan
    from finetime.config import RunConfig
    from finetime.kernel import gradient_moments, inverse_root_scale
    from finetime.losses import residual
    from finetime.predict import _start_outputs, prepare, scales_from_moments, training_times
    from finetime.predictors import real_run_generator
    from finetime.runtime import tune_allocator
    from finetime.training_time import relative_error

    tune_allocator()
    torch.set_num_threads(2)
    cells = [json.loads(line) for line in (ROOT / "bench/results/text.jsonl").read_text().splitlines() if line.strip()]
    chosen = [c for c in cells if c["config"]["optimizer"] == "adamw" and c["config"]["batch_size"] == 16
              and c["config"]["lr"] in STEPS]
    rows = []
    for c in chosen:
        cfg = RunConfig.from_dict(c["config"])
        steps = STEPS[cfg.optimizer.lr]
        task = prepare(cfg)
        opt = cfg.optimizer
        f = _start_outputs(task, task.model)
        mom = gradient_moments(task.model, task.data.x, residual(f.double(), task.data.y, cfg.objective).to(f.dtype),
                               params=task.trained, full_squares=True)
        variants = {"row x column P": scales_from_moments(opt, mom),
                    "diagonal P": {k: inverse_root_scale(opt.second_moments(mom.mean[k], mom.sq[k], mom.n), None,
                                                         opt.adam_eps) for k in mom.mean}}
        plan = batch_plan(task.data.x.shape[0], opt, cfg.steps, 1, real_run_generator(cfg))
        real = c["real"]["loss"][: steps + 1]
        real_tt = training_times(torch.tensor([real]), cfg)
        row = {"lr": opt.lr, "seed": cfg.task.seed, "steps": steps,
               "real": {k: real_tt[k]["step"] for k in EPS}, "curves": {"real": real}, "errors": {}}
        for name in ("linear", "adaptive"):
            tt = c["predictors"][name]["training_time"]
            row["errors"][name] = {k: round(relative_error(tt[k]["step"], c["real"]["training_time"][k]["step"]), 3)
                                   for k in EPS}
        for name, scales in variants.items():
            t0 = time.perf_counter()
            curve = rule_curve(cfg, task, scales, plan, steps)
            tt = training_times(torch.tensor([curve]), cfg)
            row["curves"][name] = [round(v, 6) for v in curve]
            row["errors"][name] = {k: round(relative_error(tt[k]["step"], row["real"][k]), 3) for k in EPS}
            print(f"lr {opt.lr:g} seed {cfg.task.seed} {name}: {row['errors'][name]} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows.append(row)
    out = ROOT / "bench/results/adam_rule.json"
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
