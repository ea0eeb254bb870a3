"""Piecewise re-linearization: the linearized model, re-anchored on the real network along its own prediction.

The linear model's weights are known at every step without training: ``w_t - w_s = J_s^T a_t`` for the coefficient
vector ``a`` the simulator tracks. At a checkpoint the network is moved there by one backward pass
(``J(w_s)^T a``), its true outputs and kernel are computed at the new weights, and the simulation continues from
there. With a checkpoint at every step this *is* real gradient descent; with none it is the paper's method. Between
the two it trades kernels for accuracy (issue: the kernel moves during fine-tuning).

For SGD ensembles the network follows the runs' mean coefficients, each run keeps its own deviation from the mean,
and the function-space momentum is carried over as ``Theta_new alpha`` (exact for plain GD, an approximation with
momentum). Adam and AdamW move the network by ``w <- shrink w_s + P J^T a`` (``shrink`` the decoupled weight decay
since the checkpoint; ``optim.adam``), each weight by at most ``ADAM_STEP_BOUND`` times the learning rates summed
since then, with ``P`` re-estimated at every refresh from Adam's second moments along the path
(``Network.adapt``). SGD's L2 weight decay is not supported.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Callable

import torch

from .batches import BatchPlan
from .config import INTERPOLATIONS, Reanchor
from .dynamics import ExactStepper, Problem, Recorder, Trajectory, resolve_plan, solve
from .errors import ConfigError
from .kernel import Kernel
from .kernel.update import nystrom_update, subset_rows
from .losses import loss_floor, mean_loss_and_accuracy
from .network import eval_mode, network_outputs, on_model
from .spectrum import capped_kernel
from .optim import FunctionState, Optimizer

__all__ = ["apply_coefficients", "relinearized", "checkpoint_schedule", "first_checkpoint", "RelinearizationInfo",
           "Network", "end_refreshed"]


@dataclasses.dataclass
class RelinearizationInfo:
    """What happened at the checkpoints: ``loss_gaps[i]`` is ``|L(network) - L(linear)| / L(linear)`` at checkpoint
    ``i`` (the network moved to the linear model's weights, against the linear model's own outputs there);
    ``trace_ratios[i]`` the kernel's trace there over the initial one; ``linear_regime`` is set when the linearity
    check kept the one-kernel prediction; ``interpolated`` when the curves are those of the second pass on kernels
    interpolated between the refreshes (``interpolation``: how, ``interpolated_intervals``: across how many of the
    ``kernels`` intervals that end at a refresh)."""

    checkpoints: list[int]
    kernel_seconds: float = 0.0
    network_seconds: float = 0.0
    kernel_traces: list[float] = dataclasses.field(default_factory=list)
    loss_gaps: list[float] = dataclasses.field(default_factory=list)
    trace_ratios: list[float] = dataclasses.field(default_factory=list)
    linear_regime: bool = False
    kernels: int = 0
    refresh_samples: int | None = None  # samples each refresh computed the new kernel on (None: all)
    interpolated: bool = False
    interpolation: str | None = None
    interpolated_intervals: int = 0
    sharpness_ratios: list[float] = dataclasses.field(default_factory=list)
    """With a stability cap: each refreshed kernel's sharpness over the stable limit before the cap."""
    end_check: dict | None = None
    """Where the linearity check kept one kernel and the end check ran: ``{"step", "gap", "refreshed"}``, ``gap`` the
    network's loss at the linear model's weights at ``step`` against the linear model's, as a fraction of the loss
    decrease the linear model predicts by then (``_progress_gap``)."""

    @property
    def seconds(self) -> float:
        return self.kernel_seconds + self.network_seconds

    def to_dict(self) -> dict:
        return {"checkpoints": self.checkpoints, "kernels": self.kernels, "linear_regime": self.linear_regime,
                "refresh_samples": self.refresh_samples, "interpolated": self.interpolated,
                "interpolation": self.interpolation, "interpolated_intervals": self.interpolated_intervals,
                "end_check": self.end_check,
                "loss_gaps": [round(g, 4) for g in self.loss_gaps],
                "trace_ratios": [round(r, 3) for r in self.trace_ratios],
                **({"sharpness_ratios": [None if math.isnan(r) else round(r, 3) for r in self.sharpness_ratios]}
                   if self.sharpness_ratios else {}),
                "kernel_seconds": round(self.kernel_seconds, 3), "network_seconds": round(self.network_seconds, 3)}


@dataclasses.dataclass
class Network:
    """What re-linearization may do with the real network: move it (``params`` on inputs ``x``), evaluate it
    (``outputs(model) -> (N, C)``; default: eval mode) and compute its kernel (``kernel(model) -> Kernel``, whose
    ``f0`` are the network's outputs on ``x`` and, with a test set, ``f0_test``), on all samples or on a subset."""

    model: torch.nn.Module
    x: torch.Tensor
    params: list[str]
    kernel: Callable[[torch.nn.Module], Kernel]
    outputs: Callable[[torch.nn.Module], torch.Tensor] | None = None
    subset_kernel: Callable[[torch.nn.Module, torch.Tensor], Kernel] | None = None
    """``subset_kernel(model, samples)``: the kernel on the training samples ``samples`` only (no test set); needed
    for refreshes on a subset (``refresh_samples``)."""
    precondition: dict[str, torch.Tensor] | None = None
    """A preconditioned optimizer's diagonal ``P`` per trained parameter, in the parameter's shape (Adam: the one the
    kernels were computed with)."""
    adapt: Callable[..., dict[str, torch.Tensor]] | None = None
    """``adapt(model, weight, samples)``: Adam's ``P`` re-estimated along the path, the interval since the last refresh
    (the share ``weight`` of the steps so far) entering the running average of the second moments at the mean of
    those at its two ends, at ``model`` on the training samples ``samples`` (or all); ``kernel`` and ``subset_kernel``
    use it from then on. Returns the new ``P`` in parameter shape."""

    def evaluate(self, model: torch.nn.Module) -> torch.Tensor:
        if self.outputs is not None:
            return self.outputs(model)
        with eval_mode(model):
            return network_outputs(model, self.x)


def end_refreshed(info: dict | None) -> bool:
    """Whether a re-linearization record (``RelinearizationInfo.to_dict()``, as stored in a prediction's JSON) had
    its kernel refreshed by the end check."""
    return bool(((info or {}).get("end_check") or {}).get("refreshed"))


ADAM_STEP_BOUND = 1.0
"""Re-linearizing Adam moves each weight by at most this times the summed learning rates since the last checkpoint:
Adam's step ``lr m / sqrt(v)`` is about ``lr`` per weight or less, while the linear model's ``P J^T a``, with ``P``
fixed between refreshes, can move a weight whose gradient grew along the path far further than Adam would."""


def first_checkpoint(steps: int) -> int:
    """First re-linearization checkpoint: ``T / 15`` (step 10 of 150), then ``3 T / 15``, ``7 T / 15``, ..."""
    return max(1, round(steps / 15))


def checkpoint_schedule(steps: int, count: int, first: int | None = None) -> list[int]:
    """``count`` re-linearization steps in ``(0, steps)``, spaced geometrically (the kernel moves fastest early):
    ``first, 3 first, 7 first, ...`` scaled to end before ``steps``. ``count=3, steps=150`` gives 10, 30, 70."""
    if count <= 0:
        return []
    first = first or max(1, round(steps / (2 ** (count + 1) - 1)))
    pts = sorted({min(steps - 1, first * (2 ** (k + 1) - 1)) for k in range(count)})
    return [p for p in pts if 0 < p < steps]


def apply_coefficients(model: torch.nn.Module, x: torch.Tensor, a: torch.Tensor, params: list[str],
                       chunk: int = 64, *, precondition: dict[str, torch.Tensor] | None = None,
                       shrink: float = 1.0, bound: float | None = None) -> None:
    """``w <- shrink w + P J(w)^T a`` in place for the named parameters (``a``: ``(N, C)``; evaluated in eval mode;
    ``P``: ``precondition[name]``, the identity by default); with ``bound`` each weight's move ``P J^T a`` is clipped
    to ``[-bound, bound]``."""
    named = dict(model.named_parameters())
    trained = [named[n] for n in params]
    grads = [torch.zeros_like(p) for p in trained]
    with eval_mode(model):
        for s in range(0, x.shape[0], chunk):
            out = model(on_model(model, x[s : s + chunk]))
            gs = torch.autograd.grad((out * a[s : s + chunk].to(out.device, out.dtype)).sum(), trained,
                                     allow_unused=True)
            for acc, g in zip(grads, gs):
                if g is not None:
                    acc += g
        with torch.no_grad():
            for name, p, g in zip(params, trained, grads):
                if precondition is not None:
                    g *= precondition[name].to(g.device, g.dtype)
                if bound is not None:
                    g.clamp_(-bound, bound)
                if shrink != 1.0:
                    p *= shrink
                p += g


class _Refresh:
    """The checkpoint hook: move the network to the linear model's weights, check linearity, refresh the kernel."""

    def __init__(self, problem: Problem, network: Network, reanchor: Reanchor, linearity_tol: float,
                 recorder: Recorder, info: RelinearizationInfo, samples: torch.Tensor | None = None,
                 step_bound: float | None = None, adapt: bool = True, keep_history: bool = False,
                 end_at: int | None = None, end_tol: float = 0.0, optimizer: Optimizer | None = None,
                 stability_cap: float = 0.0):
        self.problem, self.network, self.reanchor, self.tol = problem, network, reanchor, linearity_tol
        self.optimizer, self.stability_cap = optimizer, stability_cap
        self.end_at, self.end_tol = end_at, end_tol  # the end check (after a passed linearity check)
        self.rec, self.info = recorder, info
        self.samples = samples
        self.rows = None if samples is None else subset_rows(samples, problem.c)
        self.work = copy.deepcopy(network.model)
        self.trace0 = float(problem.theta.trace())
        self.count = 0
        self.done = False
        self.step_bound = step_bound
        self.last = 0  # the step the network was last moved to
        self.adapt = adapt
        self.precondition = network.precondition
        # (checkpoint, the problem simulated from it on), kept for a second pass on interpolated kernels (None: not
        # kept, so that each replaced kernel can be freed)
        self.history: list[tuple[int, Problem]] | None = [] if keep_history else None
        self.restarts: set[int] = set()  # checkpoints where Adam's P was re-estimated (its rho_t restarts)

    def __call__(self, t: int, stepper: ExactStepper, state: FunctionState):
        end = self.done and t == self.end_at and self.end_tol > 0 and self.info.linear_regime
        if not end and (self.done or t == self.end_at):  # the end check's step is no refresh of its own
            return stepper, state
        if end:  # the linear model's weights at t are w0 + J(w0)^T a: move a fresh copy of the network from w0
            self.work, self.last, self.done = copy.deepcopy(self.network.model), 0, False
        i, self.count = self.count, self.count + 1
        p, info = self.problem, self.info
        n, c = p.n, p.c
        dtype = p.theta.dtype
        sim = lambda t: None if t is None else t.to(p.device, dtype)  # noqa: E731  (kernels come on the CPU)
        alive = self.rec.alive
        mean = state.f[alive].mean(0)
        check = i == 0 and self.tol > 0
        t_net = time.perf_counter()
        bound = (None if self.step_bound is None or self.precondition is None
                 else self.step_bound * sum(stepper.lrs[self.last:t]))
        apply_coefficients(self.work, self.network.x, state.a[alive].mean(0).view(n, c), self.network.params,
                           precondition=self.precondition, shrink=state.slots.get("shrink", 1.0), bound=bound)
        prev, self.last = self.last, t
        if check or end:
            with torch.no_grad():
                f_net = self.network.evaluate(self.work)
        info.network_seconds += time.perf_counter() - t_net
        if check:
            gap = _loss_gap(sim(f_net), mean[: n * c].view(n, c), p.y, p.loss)
            info.loss_gaps.append(gap)
            if gap < self.tol:
                info.linear_regime = True
                self.done = True
                return stepper, state
        if end:
            gap = _progress_gap(sim(f_net), mean[: n * c].view(n, c), p.f0, p.y, p.loss)
            refresh = gap is not None and gap >= self.end_tol
            info.end_check = {"step": t, "gap": None if gap is None else round(gap, 4), "refreshed": refresh}
            if not refresh:
                self.done = True
                return stepper, state
            info.linear_regime = False
        if self.adapt and self.network.adapt is not None:  # Adam's v where the network now is, averaged over the path
            t_a = time.perf_counter()
            self.precondition = self.network.adapt(self.work, (t - prev) / t, self.samples)
            info.network_seconds += time.perf_counter() - t_a
            self.restarts.add(t)
        restart = t in self.restarts
        if self.samples is not None:
            return self._subset_refresh(t, check, mean, stepper, state, restart)
        t_k = time.perf_counter()
        k = self.network.kernel(self.work)
        self._record(k.theta, time.perf_counter() - t_k)
        anchor = self.reanchor is Reanchor.ALL or (self.reanchor is Reanchor.FIRST and i == 0)
        theta = self._cap(sim(k.theta), sim(k.f0) if anchor else mean[: n * c].view(n, c), stepper, t)
        f_new = sim(k.f0).reshape(-1)
        if not check:
            info.loss_gaps.append(_loss_gap(sim(k.f0), mean[: n * c].view(n, c), p.y, p.loss))
        theta_test = sim(k.theta_test)
        if theta_test is not None:
            f_new = torch.cat([f_new, sim(k.f0_test).reshape(-1)])
        # each run keeps its deviation from the ensemble mean
        f = state.f - mean + f_new if anchor else state.f
        f0_test = sim(k.f0_test)
        jw = {}
        if p.jw0 is not None and k.jw0 is not None:  # weight decay: J_s w_t = J_s w_s + f_t - f_s, f_s the curve here
            f_s = f_new if anchor else mean
            jw["jw0"] = sim(k.jw0) + sim(k.f0) - f_s[: n * c].view(n, c)
            if p.jw0_test is not None:
                jw["jw0_test"] = sim(k.jw0_test) + f0_test - f_s[n * c :].view(-1, c)
        elif p.jw0 is not None:  # no J w at the new weights: J w_t as the old linearization has it
            jw["jw0"] = p.jw0 + sim(k.f0) - p.f0
            if p.jw0_test is not None:
                jw["jw0_test"] = p.jw0_test + f0_test - p.f0_test
        stepper = stepper.with_problem(dataclasses.replace(
            p, theta=theta, f0=sim(k.f0), theta_test=theta_test, f0_test=f0_test, **jw))
        if self.history is not None:
            self.history.append((t, stepper.problem))
        state = _rebase(stepper, FunctionState(f, state.slots, state.a), restart)
        if anchor:
            self.rec(state.f, t)  # the checkpoint's curve value is the re-anchored (true network) one
        return stepper, state

    def _subset_refresh(self, t: int, check: bool, mean: torch.Tensor, stepper: ExactStepper, state: FunctionState,
                        restart: bool):
        """The refresh on the subset: the new kernel on ``samples`` only, carried to every sample (and the test set)
        by ``nystrom_update`` on the kernel in use. The curve is not re-anchored (``reanchor`` must be ``none``)."""
        p = stepper.problem
        dtype = p.theta.dtype
        t_k = time.perf_counter()
        k = self.network.subset_kernel(self.work, self.samples)
        theta, theta_test, _ = nystrom_update(p.theta, self.rows, k.theta.to(p.device, dtype), p.theta_test)
        self._record(theta, time.perf_counter() - t_k)
        theta = self._cap(theta, mean[: p.n * p.c].view(p.n, p.c), stepper, t)
        if not check:
            f_lin = mean[: p.n * p.c].view(p.n, p.c)[self.samples]
            self.info.loss_gaps.append(_loss_gap(k.f0.to(p.device, dtype), f_lin, p.y[self.samples], p.loss))
        stepper = stepper.with_problem(dataclasses.replace(p, theta=theta, theta_test=theta_test))
        if self.history is not None:
            self.history.append((t, stepper.problem))
        state = _rebase(stepper, state, restart)
        return stepper, state

    def _cap(self, theta: torch.Tensor, f: torch.Tensor, stepper: ExactStepper, t: int) -> torch.Tensor:
        """The refreshed kernel with its sharpness at the outputs ``f`` held at ``stability_cap`` times the stable
        limit of the learning rates still to come (``spectrum.capped_kernel``; SGD only, not where the cap is 0);
        records the sharpness over the limit before the cap."""
        opt = self.optimizer
        if self.stability_cap <= 0 or opt is None or opt.preconditioned:
            return theta
        lr = max(stepper.lrs[t:], default=0.0)
        if lr <= 0:
            return theta
        p = self.problem
        t_c = time.perf_counter()
        limit = self.stability_cap * opt.stable_lr(1.0) / lr  # stable_lr(s) = K / s: the limit on s is K / lr
        batch = None if opt.is_full_batch(p.n) else opt.batch_size
        capped, ratio = capped_kernel(theta, f, p.loss, limit, batch, torch.Generator().manual_seed(t))
        self.info.sharpness_ratios.append(ratio)
        self.info.kernel_seconds += time.perf_counter() - t_c
        return capped

    def _record(self, theta: torch.Tensor, seconds: float) -> None:
        """Count a refreshed kernel, its seconds and its trace against the first kernel's."""
        info = self.info
        info.kernel_seconds += seconds
        info.kernels += 1
        info.kernel_traces.append(float(theta.trace()))
        info.trace_ratios.append(info.kernel_traces[-1] / self.trace0)


def relinearized(problem: Problem, optimizer: Optimizer, steps: int, network: Network, *, checkpoints: list[int],
                 reanchor: Reanchor | str = Reanchor.ALL, linearity_tol: float = 0.0, runs: int = 1,
                 generator: torch.Generator | None = None, plan: BatchPlan | None = None,
                 refresh_samples: torch.Tensor | None = None, adam_step_bound: float | None = ADAM_STEP_BOUND,
                 adapt_preconditioner: bool = True,
                 interpolate: bool = False, interpolation: str = "linear", min_growth: float = 0.0,
                 max_memory: int | None = None, end_tol: float = 0.0,
                 stability_cap: float = 0.0) -> tuple[Trajectory, RelinearizationInfo]:
    """Simulate ``optimizer`` on the linearization at ``w0`` (``problem``), re-linearizing the real ``network`` at
    ``checkpoints`` (a hook of the simulation driver).

    ``reanchor``: at which checkpoints the curve restarts from the network's true outputs (``all``, ``first``,
    ``none``); elsewhere only the kernel is refreshed. ``linearity_tol > 0`` turns on the linearity check at the
    first checkpoint: if the network moved there has the linear model's loss to within that relative tolerance, the
    one-kernel prediction is kept. ``plan``: an explicit batch order (e.g. a real run's) instead of ``runs`` drawn
    from ``generator``. ``refresh_samples``: training-sample indices on which each refresh computes the new kernel,
    carried to all samples by ``kernel.update.nystrom_update`` (``None``: every refresh is a whole kernel); needs
    ``network.subset_kernel`` and ``reanchor="none"``. ``network.model`` is not modified.

    For a preconditioned optimizer (Adam; ``network.precondition``) the network is moved by at most
    ``adam_step_bound`` times the learning rates summed since the last checkpoint per weight (``None``: unbounded), and
    with ``adapt_preconditioner`` ``P`` is re-estimated at each refresh from the second moments along the path
    (``network.adapt``), the function-space rule's ``rho_t`` restarting from it.

    ``interpolate`` (with ``reanchor="none"``): once the checkpoints have given their kernels, the same runs are
    simulated again on kernels that move from each refreshed kernel to the next (``_Interpolate``) instead of
    jumping at the checkpoints: the kernel grows during an interval, not at its end (``interpolation``: ``linear`` in
    time, or ``geometric``, its trace changing by the same factor every step). An interval over which the kernel's
    trace grows less than ``min_growth``-fold keeps its first kernel; where every interval does, the second pass is
    not run (``info.interpolated`` false). The network is not moved again; the returned curves are the second
    pass's. Where the kernels it keeps would exceed ``INTERPOLATION_MAX_BYTES``, or ``max_memory`` bytes (the user's
    memory budget, ``--max-memory``), the kernels stay stepwise.

    ``end_tol > 0`` adds the end check where the linearity check keeps one kernel: at step ``steps - 1`` the network
    is moved from ``w0`` to the linear model's weights and evaluated; if its loss differs from the linear model's by
    ``end_tol`` times the loss decrease the linear model predicts or more (``info.end_check``), the kernel is
    refreshed there and the runs are simulated again on kernels that move geometrically in time from ``w0``'s to
    it (``config.END_TOL``). Not where those two kernels and one between them would exceed the memory bound.

    ``stability_cap > 0`` (SGD): each refreshed kernel's sharpness at the outputs it starts from is held at
    ``stability_cap`` times the stable limit of the largest learning rate still to come, its top eigenvalues clipped
    (``spectrum.capped_kernel``; ``info.sharpness_ratios``, the sharpness before over the limit), as real training
    at the edge of stability holds it. The kernel at ``w0`` and the test-set cross kernels are not capped."""
    if not optimizer.relinearizable:
        raise ConfigError(f"re-linearization does not support {optimizer.name}'s weight decay; use the linear "
                          "predictor")
    if optimizer.preconditioned and network.precondition is None:
        raise ValueError(f"re-linearizing {optimizer.name} needs network.precondition (its P at w0)")
    try:
        reanchor = Reanchor(reanchor)
    except ValueError:
        raise ConfigError(f"reanchor must be one of {', '.join(r.value for r in Reanchor)}, got {reanchor!r}") from None
    if interpolate and reanchor is not Reanchor.NONE:
        raise ConfigError("interpolating the kernel between refreshes needs --reanchor none (a re-anchored curve "
                          "jumps to the network's outputs)")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"kernel interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if refresh_samples is not None:
        refresh_samples = torch.as_tensor(refresh_samples, dtype=torch.long).cpu().unique()  # they index the data
        if refresh_samples.numel() == 0 or refresh_samples.min() < 0 or refresh_samples.max() >= problem.n:
            raise ValueError(f"refresh_samples must be indices in [0, {problem.n})")
        if refresh_samples.numel() == problem.n:
            refresh_samples = None
    if refresh_samples is not None:
        if reanchor is not Reanchor.NONE:
            raise ConfigError("refreshes on a subset of samples do not re-anchor the curve; use --reanchor none or "
                              "--refresh-samples all")
        if network.subset_kernel is None:
            raise ValueError("refresh_samples needs network.subset_kernel")
    bound = INTERPOLATION_MAX_BYTES if max_memory is None else min(INTERPOLATION_MAX_BYTES, max_memory)
    if interpolate and _interpolation_bytes(problem, len(checkpoints)) > bound:
        interpolate = False  # the kernels it keeps would not fit: stepwise kernels (info.interpolated says so)
    if end_tol > 0 and (linearity_tol <= 0 or _interpolation_bytes(problem, 1) > bound):
        end_tol = 0.0  # no linearity check to pass, or the end refresh's kernels would not fit
    plan, r_runs = resolve_plan(problem.n, optimizer, steps, runs, generator, plan)
    info = RelinearizationInfo(sorted(checkpoints),
                               refresh_samples=None if refresh_samples is None else refresh_samples.numel())
    rec = Recorder(problem, r_runs, steps, problem.theta.dtype)
    # the end check's step: the last one, where it comes after every checkpoint (a short run may have none later)
    end_at = steps - 1 if end_tol > 0 and steps - 1 > max(info.checkpoints, default=0) else None
    hook = _Refresh(problem, network, reanchor, linearity_tol, rec, info, refresh_samples,
                    adam_step_bound, adapt_preconditioner, keep_history=interpolate or end_at is not None,
                    end_at=end_at, end_tol=end_tol, optimizer=optimizer, stability_cap=stability_cap)
    stops = sorted(set(info.checkpoints) | ({end_at} if end_at is not None else set()))
    traj, _ = solve(ExactStepper(problem, optimizer, steps, plan, track=True), steps, runs=r_runs, recorder=rec,
                    method="relinearized", checkpoints=stops, hook=hook)
    if info.end_check and info.end_check["refreshed"]:  # w0's kernel moving geometrically to the end's
        interp = _Interpolate([(0, problem)] + hook.history, hook.restarts, geometric=True)
        traj = _interpolated(problem, optimizer, steps, plan, r_runs, interp)
        info.interpolated, info.interpolation, info.interpolated_intervals = True, "geometric", interp.intervals
    elif interpolate and hook.history:
        interp = _Interpolate([(0, problem)] + hook.history, hook.restarts, interpolation == "geometric", min_growth)
        if interp.moves:
            traj = _interpolated(problem, optimizer, steps, plan, r_runs, interp)
            info.interpolated, info.interpolation = True, interpolation
            info.interpolated_intervals = interp.intervals
    return traj, info


INTERPOLATION_POINTS = 8
"""Kernel switches per interval between refreshes when the kernel is interpolated (``interpolate=True``): each
sub-interval runs on the interpolated kernel at its middle (every step where an interval is shorter)."""


INTERPOLATION_MAX_BYTES = 2 * 2**30
"""Interpolation keeps every refreshed kernel until the second pass; above this many bytes for them the kernels stay
stepwise instead (``RelinearizationInfo.interpolated`` is then false)."""


def _interpolation_bytes(problem: Problem, refreshes: int) -> int:
    """Bytes of the kernels an interpolated prediction holds at once: the first, each refresh's and one
    interpolated."""
    one = problem.theta.numel() * problem.theta.element_size()
    if problem.theta_test is not None:
        one += problem.theta_test.numel() * problem.theta_test.element_size()
    return (refreshes + 2) * one


class _Interpolate:
    """The second pass's hook: between consecutive refreshes (``w0``'s kernel at step 0) the kernel moves from one
    refreshed kernel to the next, linearly in time or geometrically (``geometric``), in ``INTERPOLATION_POINTS``
    switches per interval; an interval whose kernel's trace grows less than ``min_growth``-fold keeps its first
    kernel, and after the last refresh its kernel is kept. ``intervals``: how many intervals are interpolated;
    ``moves``: whether any is."""

    def __init__(self, knots: list[tuple[int, Problem]], restarts: set[int] = frozenset(), geometric: bool = False,
                 min_growth: float = 0.0):
        self.knots = knots
        self.geometric = geometric
        # the trace ratio of each interval's end to its start (NaN for a kernel without trace)
        self.ratios = [_growth(a.theta, b.theta) for (_, a), (_, b) in zip(knots, knots[1:])]
        # min_growth 0: every interval, as linear interpolation always did; otherwise a NaN ratio keeps its kernel
        moving = [min_growth <= 0 or r >= min_growth for r in self.ratios]
        self.intervals = sum(moving)
        self.moves = self.intervals > 0
        self.restarts = restarts  # where the first pass restarted Adam's rho_t on a new P; the second pass does too
        self.at: dict[int, tuple[int, float]] = {}  # switch step -> (interval, interpolation weight)
        for i, ((t0, _), (t1, _)) in enumerate(zip(knots, knots[1:])):
            if not moving[i]:
                self.at[t0] = (i, 0.0)
                continue
            cuts = sorted({t0 + (j * (t1 - t0)) // INTERPOLATION_POINTS for j in range(INTERPOLATION_POINTS)})
            for lo, hi in zip(cuts, cuts[1:] + [t1]):
                self.at[lo] = (i, ((lo + hi) / 2 - t0) / (t1 - t0))
        self.at[knots[-1][0]] = (len(knots) - 1, 0.0)

    def problem_at(self, t: int) -> Problem:
        i, w = self.at[t]
        p0 = self.knots[i][1]
        if w == 0.0:
            return p0
        p1 = self.knots[i + 1][1]
        if self.geometric:
            w = geometric_weight(w, self.ratios[i])
        lerp = lambda a, b: None if a is None or b is None else torch.lerp(a, b, w)  # noqa: E731
        return dataclasses.replace(p0, theta=lerp(p0.theta, p1.theta), theta_test=lerp(p0.theta_test, p1.theta_test))

    def __call__(self, t: int, stepper: ExactStepper, state: FunctionState):
        stepper = stepper.with_problem(self.problem_at(t))
        return stepper, _rebase(stepper, state, t in self.restarts)


def _growth(a: torch.Tensor, b: torch.Tensor) -> float:
    """``tr(b) / tr(a)``; NaN where ``a`` has no positive trace."""
    ta, tb = float(torch.diagonal(a).sum()), float(torch.diagonal(b).sum())
    return tb / ta if ta > 0 else math.nan


def geometric_weight(w: float, ratio: float) -> float:
    """The weight ``u`` of the straight line ``(1 - u) A + u B`` at which its trace is ``tr(A) ratio**w`` (``ratio``:
    ``tr(B) / tr(A)``), so that the trace moves geometrically as ``w`` goes from 0 to 1; ``w`` where the ratio is
    about 1 or not positive."""
    if not math.isfinite(ratio) or ratio <= 0 or abs(ratio - 1) < 1e-6:
        return w
    return (ratio ** w - 1) / (ratio - 1)


def _rebase(stepper: ExactStepper, state: FunctionState, restart: bool) -> FunctionState:
    """The optimizer's state carried to ``stepper``'s kernel; where Adam's ``P`` was re-estimated (``restart``) its
    ``rho_t`` restarts from the expected square of a batch gradient under the new kernel at the current outputs
    (``ExactStepper.expected_gradient_square``), not from the next batch's, which may be a short last batch."""
    if restart:
        state.slots["restart_q"] = stepper.expected_gradient_square(state)
    return stepper.rule.rebase(state, stepper.table)


def _interpolated(problem: Problem, optimizer: Optimizer, steps: int, plan, runs: int,
                  hook: _Interpolate) -> Trajectory:
    """The same runs (same batch order) again on kernels interpolated between the refreshed ones (``hook``), Adam's
    ``rho_t`` restarting at the checkpoints where the first pass restarted it."""
    stepper = ExactStepper(hook.problem_at(0), optimizer, steps, plan, track=True)
    switches = sorted(t for t in hook.at if 0 < t < steps)
    traj, _ = solve(stepper, steps, runs=runs, method="relinearized", checkpoints=switches, hook=hook)
    return traj


def _progress_gap(f_net: torch.Tensor, f_lin: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, loss) -> float | None:
    """``|L(f_net) - L(f_lin)| / (L(f0) - L(f_lin))``: the loss gap between the network at the linear model's
    weights and the linear model, as a fraction of the loss decrease the linear model predicts from ``f0``; ``None``
    where it predicts none."""
    (l_net, l_lin, l0), _ = mean_loss_and_accuracy(torch.stack([f_net, f_lin, f0.to(f_lin.dtype)]), y, loss)
    drop = float(l0 - l_lin)
    return float((l_net - l_lin).abs()) / drop if drop > 0 else None


def _loss_gap(f_net: torch.Tensor, f_lin: torch.Tensor, y: torch.Tensor, loss) -> float:
    """``|L(f_net) - L(f_lin)| / (L(f_lin) - L*)``: how far the network at the linear model's weights is from the
    linear model's outputs, in training loss above its floor ``L*`` (0; with label smoothing the smoothed target's
    entropy, ``losses.loss_floor``), 0 for a network that is its own linearization."""
    (l_net, l_lin), _ = mean_loss_and_accuracy(torch.stack([f_net, f_lin]), y, loss)
    excess = l_lin - loss_floor(loss, f_lin.shape[-1])
    return float((l_net - l_lin).abs() / excess.clamp_min(1e-12))
