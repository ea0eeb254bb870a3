"""Per-sample gradients of the parameterized operations we recognize, from their inputs and output gradients.

Each rule binds a call of a functional op (``F.linear``, ``F.conv1d/2d``, ``F.batch_norm`` in eval mode,
``F.layer_norm``, ``F.group_norm``, ``F.embedding``) to an ``OpRecord``. Given the gradients ``g`` of the scalar
outputs ``f_c`` (summed over samples) w.r.t. the op's output, shape ``(n, C, *out.shape[1:])``, a record returns,
for each parameter it touches, either ``Factors`` (weights of linear maps) or materialized per-sample gradients
``(n, C, D)`` (biases and normalization affines).

Capturing calls at the functional level (not module hooks) sees the tensor that is really convolved (after a
module's own padding), every call of a shared module, and functional use of parameters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import KernelError
from ._factors import Factors, IndexFactor

__all__ = ["expand_shared_input", "OpRecord", "RULES"]


@dataclasses.dataclass
class OpRecord:
    kind: str
    params: dict[str, str]  # role ('weight', 'bias') -> parameter name
    inp: torch.Tensor
    meta: dict[str, Any]
    version: int = 0
    edge: Any = None
    out_shape: tuple = ()
    contribute: Callable[["OpRecord", torch.Tensor, int], dict] | None = None

    def check_unchanged(self):
        if self.inp._version != self.version:
            raise KernelError(
                f"the input of a {self.kind} op was modified in place after the op ran; the kernel engine needs "
                "it unchanged (replace in-place ops such as ReLU(inplace=True) on that tensor)"
            )


def _bind(sig: list[tuple[str, Any]], args, kwargs) -> dict:
    out = {}
    for i, (name, default) in enumerate(sig):
        if i < len(args):
            out[name] = args[i]
        elif name in kwargs:
            out[name] = kwargs[name]
        else:
            out[name] = default
    return out


_REQ = object()


# --------------------------------------------------------------------------------------------------- linear
def _linear_contrib(rec: OpRecord, g: torch.Tensor, c: int) -> dict:
    a = rec.inp
    n, d_in = a.shape[0], a.shape[-1]
    p = a[0].numel() // d_in
    out = {}
    gl = g.reshape(n, c, 1, p, -1)
    if "weight" in rec.params:
        out[rec.params["weight"]] = Factors(gl, a.reshape(n, 1, 1, p, d_in))
    if "bias" in rec.params:
        out[rec.params["bias"]] = gl.sum((2, 3))
    return out


def _capture_linear(b: dict, tracked: dict) -> OpRecord | None:
    params = {r: tracked[id(b[r])] for r in ("weight", "bias") if b[r] is not None and id(b[r]) in tracked}
    if not params:
        return None
    x = b["input"]
    if x.dim() < 2:
        raise KernelError("linear layer applied to an unbatched input; the first dimension must index samples")
    return OpRecord("linear", params, x.detach(), {}, contribute=_linear_contrib)


# ---------------------------------------------------------------------------------------------- convolution
def _conv_patches(a: torch.Tensor, w_shape, meta) -> torch.Tensor:
    """Unfolded input patches ``(n, C_in * prod(k), P)`` for a 1-d or 2-d convolution."""
    nd = meta["nd"]
    k = tuple(w_shape[2:])
    stride, dilation, padding = meta["stride"], meta["dilation"], meta["padding"]
    if nd == 1:
        a = a.unsqueeze(2)
        k, stride, dilation = (1, k[0]), (1, stride[0]), (1, dilation[0])
        padding = padding if isinstance(padding, str) else (0, padding[0])
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # 'same' (stride 1): PyTorch puts the extra pad on the right/bottom
            pads = []
            for kk, dd in zip(reversed(k), reversed(dilation)):
                total = dd * (kk - 1)
                pads += [total // 2, total - total // 2]
            a = F.pad(a, pads)
            padding = (0, 0)
    return F.unfold(a, k, dilation=dilation, padding=padding, stride=stride)


def _live_taps(x_shape, w_shape, meta, device) -> torch.Tensor | None:
    """Kernel taps that touch real input at some position; the others only ever see zero padding (the conv's own,
    or an ``F.pad`` with zeros right before it) and have zero gradient. ``None`` if every tap is live."""
    pre = meta.get("pre_pad")
    real = pre[1] if pre is not None else x_shape
    ones = torch.ones(1, 1, *real[2:], device=device)
    if pre is not None:
        ones = F.pad(ones, pre[0])
    cover = _conv_patches(ones, (1, 1, *w_shape[2:]), meta)[0]  # (prod(k), P)
    live = cover.abs().sum(1) > 0
    return None if bool(live.all()) else live.nonzero().squeeze(1)


def _conv_contrib(rec: OpRecord, g: torch.Tensor, c: int) -> dict:
    meta = rec.meta
    groups = meta["groups"]
    n = g.shape[0]
    cout = g.shape[2]
    gl = g.reshape(n, c, groups, cout // groups, -1).transpose(3, 4)  # (n, C, G, P, out/G)
    out = {}
    if "weight" in rec.params:
        patches = _conv_patches(rec.inp, meta["w_shape"], meta)  # (n, Cin*k, P)
        p = patches.shape[-1]
        taps = math.prod(meta["w_shape"][2:])
        patches = patches.reshape(n, groups, -1, taps, p)  # (n, G, Cin/G, k, P)
        if "live_taps" not in meta:
            meta["live_taps"] = _live_taps(rec.inp.shape, meta["w_shape"], meta, rec.inp.device)
        if meta["live_taps"] is not None:
            patches = patches.index_select(3, meta["live_taps"])
        r = patches.reshape(n, groups, -1, p).transpose(2, 3).unsqueeze(1)  # (n, 1, G, P, Cin/G*k_live)
        out[rec.params["weight"]] = Factors(gl, r, meta["live_taps"])
    if "bias" in rec.params:
        out[rec.params["bias"]] = gl.sum(3).reshape(n, c, cout)
    return out


def _capture_conv(nd: int):
    def capture(b: dict, tracked: dict, padded: dict | None = None) -> OpRecord | None:
        params = {r: tracked[id(b[r])] for r in ("weight", "bias") if b[r] is not None and id(b[r]) in tracked}
        if not params:
            return None
        tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd  # noqa: E731
        padding = b["padding"] if isinstance(b["padding"], str) else tup(b["padding"])
        meta = dict(nd=nd, stride=tup(b["stride"]), padding=padding, dilation=tup(b["dilation"]),
                    groups=int(b["groups"]), w_shape=tuple(b["weight"].shape))
        src = (padded or {}).get(id(b["input"]))
        if src is not None and src[0] is b["input"]:
            meta["pre_pad"] = src[1:]  # (pad widths, unpadded shape)
        return OpRecord(f"conv{nd}d", params, b["input"].detach(), meta, contribute=_conv_contrib)

    return capture


# ----------------------------------------------------------------------------------------------- norm layers
def _affine_contrib(rec: OpRecord, g: torch.Tensor, c: int, xhat: torch.Tensor, ch_dim_sizes) -> dict:
    n = g.shape[0]
    out = {}
    if "weight" in rec.params:
        out[rec.params["weight"]] = ch_dim_sizes(g * xhat.unsqueeze(1)).reshape(n, c, -1)
    if "bias" in rec.params:
        out[rec.params["bias"]] = ch_dim_sizes(g).reshape(n, c, -1)
    return out


def _bn_contrib(rec: OpRecord, g: torch.Tensor, c: int) -> dict:
    x = rec.inp
    shape = [1, -1] + [1] * (x.dim() - 2)
    xhat = (x - rec.meta["mean"].view(shape)) / torch.sqrt(rec.meta["var"].view(shape) + rec.meta["eps"])
    red = tuple(range(3, g.dim()))
    return _affine_contrib(rec, g, c, xhat, lambda t: t.sum(red) if red else t)


def _capture_batch_norm(b: dict, tracked: dict) -> OpRecord | None:
    params = {r: tracked[id(b[r])] for r in ("weight", "bias") if b[r] is not None and id(b[r]) in tracked}
    if not params:
        return None
    if b["training"] or b["running_mean"] is None:
        raise KernelError(
            "BatchNorm runs with batch statistics, which couple the samples; the per-sample kernel is computed "
            "with running statistics (model.eval())"
        )
    meta = dict(mean=b["running_mean"].detach().clone(), var=b["running_var"].detach().clone(), eps=b["eps"])
    return OpRecord("batch_norm", params, b["input"].detach(), meta, contribute=_bn_contrib)


def _ln_contrib(rec: OpRecord, g: torch.Tensor, c: int) -> dict:
    x = rec.inp
    k = len(rec.meta["shape"])
    dims = tuple(range(x.dim() - k, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, unbiased=False)
    xhat = (x - mean) / torch.sqrt(var + rec.meta["eps"])
    red = tuple(range(2, g.dim() - k))
    return _affine_contrib(rec, g, c, xhat, lambda t: t.sum(red) if red else t)


def _capture_layer_norm(b: dict, tracked: dict) -> OpRecord | None:
    params = {r: tracked[id(b[r])] for r in ("weight", "bias") if b[r] is not None and id(b[r]) in tracked}
    if not params:
        return None
    shape = tuple(b["normalized_shape"]) if not isinstance(b["normalized_shape"], int) else (b["normalized_shape"],)
    return OpRecord("layer_norm", params, b["input"].detach(), dict(shape=shape, eps=b["eps"]), contribute=_ln_contrib)


def _gn_contrib(rec: OpRecord, g: torch.Tensor, c: int) -> dict:
    x = rec.inp
    n, ch = x.shape[:2]
    groups = rec.meta["groups"]
    xg = x.reshape(n, groups, -1)
    xhat = ((xg - xg.mean(-1, keepdim=True)) / torch.sqrt(xg.var(-1, keepdim=True, unbiased=False)
                                                           + rec.meta["eps"])).reshape(x.shape)
    red = tuple(range(3, g.dim()))
    return _affine_contrib(rec, g, c, xhat, lambda t: t.sum(red) if red else t)


def _capture_group_norm(b: dict, tracked: dict) -> OpRecord | None:
    params = {r: tracked[id(b[r])] for r in ("weight", "bias") if b[r] is not None and id(b[r]) in tracked}
    if not params:
        return None
    meta = dict(groups=int(b["num_groups"]), eps=b["eps"])
    return OpRecord("group_norm", params, b["input"].detach(), meta, contribute=_gn_contrib)


# ------------------------------------------------------------------------------------------------ embedding
def _emb_contrib(rec: OpRecord, g: torch.Tensor, c: int) -> dict:
    idx = rec.inp
    n = idx.shape[0]
    d = g.shape[-1]
    flat = idx.reshape(n, -1).long()
    pad = rec.meta["padding_idx"]
    if pad is not None:
        flat = torch.where(flat == pad, torch.full_like(flat, -1), flat)
    p = flat.shape[1]
    return {rec.params["weight"]: Factors(IndexFactor(flat, rec.meta["rows"]), g.reshape(n, c, 1, p, d))}


def _capture_embedding(b: dict, tracked: dict) -> OpRecord | None:
    w = b["weight"]
    if id(w) not in tracked:
        return None
    if b["max_norm"] is not None or b["scale_grad_by_freq"]:
        raise KernelError("embeddings with max_norm or scale_grad_by_freq are not supported by the kernel engine")
    pad = b["padding_idx"]
    if pad is not None and pad < 0:
        pad += w.shape[0]
    meta = dict(padding_idx=pad, rows=w.shape[0])
    return OpRecord("embedding", {"weight": tracked[id(w)]}, b["input"].detach(), meta, contribute=_emb_contrib)


# ---------------------------------------------------------------------------------------------- dispatch
_SIG_LINEAR = [("input", _REQ), ("weight", _REQ), ("bias", None)]
_SIG_CONV = [("input", _REQ), ("weight", _REQ), ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1),
             ("groups", 1)]
_SIG_BN = [("input", _REQ), ("running_mean", None), ("running_var", None), ("weight", None), ("bias", None),
           ("training", False), ("momentum", 0.1), ("eps", 1e-5)]
_SIG_TORCH_BN = [("input", _REQ), ("weight", None), ("bias", None), ("running_mean", None), ("running_var", None),
                 ("training", False), ("momentum", 0.1), ("eps", 1e-5), ("cudnn_enabled", True)]
_SIG_LN = [("input", _REQ), ("normalized_shape", _REQ), ("weight", None), ("bias", None), ("eps", 1e-5)]
_SIG_GN = [("input", _REQ), ("num_groups", _REQ), ("weight", None), ("bias", None), ("eps", 1e-5)]
_SIG_EMB = [("input", _REQ), ("weight", _REQ), ("padding_idx", None), ("max_norm", None), ("norm_type", 2.0),
            ("scale_grad_by_freq", False), ("sparse", False)]
_SIG_TORCH_EMB = [("weight", _REQ), ("input", _REQ), ("padding_idx", -1), ("scale_grad_by_freq", False),
                  ("sparse", False)]


def _torch_embedding(b):
    b = dict(b)
    b["max_norm"] = None
    if b["padding_idx"] == -1:
        b["padding_idx"] = None
    return b


_CONV_RULES = (_capture_conv(1), _capture_conv(2))

RULES: dict[Callable, tuple[list, Callable, Callable | None]] = {
    F.linear: (_SIG_LINEAR, _capture_linear, None),
    torch.conv1d: (_SIG_CONV, _CONV_RULES[0], None),
    torch.conv2d: (_SIG_CONV, _CONV_RULES[1], None),
    F.batch_norm: (_SIG_BN, _capture_batch_norm, None),
    torch.batch_norm: (_SIG_TORCH_BN, _capture_batch_norm, None),
    F.layer_norm: (_SIG_LN, _capture_layer_norm, None),
    torch.layer_norm: (_SIG_LN, _capture_layer_norm, None),
    F.group_norm: (_SIG_GN, _capture_group_norm, None),
    torch.group_norm: (_SIG_GN, _capture_group_norm, None),
    F.embedding: (_SIG_EMB, _capture_embedding, None),
    torch.embedding: (_SIG_TORCH_EMB, _capture_embedding, _torch_embedding),
}
"""Functional op -> (signature, capture rule, argument adapter)."""


_PER_POSITION = {F.linear: 0, F.embedding: 0, torch.embedding: 1}
"""Ops that act position by position, with the index of their ``input`` argument."""


def expand_shared_input(func, args, kwargs, batch: int):
    """``(args, kwargs)`` with a per-position op's ``input`` expanded from a leading dimension of 1 to ``batch``.

    Inputs shared by all samples (position ids of shape ``(1, L)`` in BERT) give outputs that later broadcast over
    the batch: the gradient at such an output is the sum over samples, and per-sample gradients are lost. Expanded,
    the output has one row per sample and the same values, so everything downstream computes the same numbers."""
    pos = _PER_POSITION.get(func)
    if pos is None or batch <= 1:
        return args, kwargs
    if len(args) > pos:
        x = args[pos]
        if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == 1:
            args = (*args[:pos], x.expand(batch, *x.shape[1:]), *args[pos + 1 :])
    elif isinstance(kwargs.get("input"), torch.Tensor):
        x = kwargs["input"]
        if x.dim() >= 2 and x.shape[0] == 1:
            kwargs = {**kwargs, "input": x.expand(batch, *x.shape[1:])}
    return args, kwargs


def capture_call(func, args, kwargs, tracked, padded=None) -> OpRecord | None:
    sig, rule, adapt = RULES[func]
    b = _bind(sig, args, kwargs)
    if adapt is not None:
        b = adapt(b)
    if rule in _CONV_RULES:
        return rule(b, tracked, padded)
    return rule(b, tracked)


def zero_pad_info(args, kwargs):
    """``(pad widths, input shape)`` if this ``F.pad`` call pads with zeros, else None."""
    b = _bind([("input", _REQ), ("pad", _REQ), ("mode", "constant"), ("value", None)], args, kwargs)
    if b["mode"] == "constant" and not b["value"]:
        return tuple(b["pad"]), tuple(b["input"].shape)
    return None

