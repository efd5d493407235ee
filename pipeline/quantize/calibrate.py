"""Calibration: run the fp32 model once per crop with every intermediate tensor exposed.

The fp32 module is compiled once with all float activations added to its outputs. For each
tensor we keep its exact min/max and a fixed-size random sample of values per image (seeded),
from which each calibrate mode picks a range. Collected statistics are independent of the mode,
so they are cached (joblib.Memory) and a change of mode does not rerun the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from ..compile import cpu_vm
from ..relax_io import ENTRY, num_inputs

SAMPLES_PER_IMAGE = 512
KEEP_FULL_IMAGES = 4  # full fp32 tensors kept for per-layer SQNR in the report


FORMAT_VERSION = 4  # bump when what `collect` returns changes (joblib caches keyed on it)


@dataclass
class TensorStats:
    minimum: float
    maximum: float
    samples: np.ndarray  # float32, a seeded random subset of all values seen
    channel_mean: np.ndarray  # mean per channel (axis 1 of NCHW / last axis of (N, K))


def _channel_sum(t: np.ndarray) -> np.ndarray:
    axis = 1 if t.ndim == 4 else t.ndim - 1
    return t.astype(np.float64).sum(axis=tuple(i for i in range(t.ndim) if i != axis))


def activation_vars(mod: tvm.IRModule) -> list[relax.Var]:
    """The calibration points of `main`: its float32 inputs, then every float32 tensor binding,
    in program order."""
    func = mod[ENTRY]

    def is_float_tensor(var):
        return isinstance(var.ty, relax.TensorType) and var.ty.dtype == "float32" and var.ty.ndim >= 1

    inputs = [p for p in func.params[:num_inputs(mod)] if is_float_tensor(p)]
    return inputs + [b.var for b in func.body.blocks[0].bindings if is_float_tensor(b.var)]


def instrument(mod: tvm.IRModule) -> tvm.IRModule:
    """`main` returning a tuple of every activation (program order), then the logits."""
    mod = relax.transform.ToNonDataflow()(mod)
    func = mod[ENTRY]
    block = func.body.blocks[0]
    wanted = activation_vars(mod)
    out = relax.Var("instrumented", relax.TupleType([v.ty for v in wanted]))
    bindings = list(block.bindings) + [relax.VarBinding(out, relax.Tuple(wanted))]
    body = relax.SeqExpr([relax.BindingBlock(bindings)], out)
    new = relax.Function(func.params, body, out.ty, func.is_pure, func.attrs)
    return tvm.IRModule({ENTRY: new})


def collect(mod: tvm.IRModule, weights: dict[str, np.ndarray], inputs: np.ndarray, seed: int = 0):
    """(stats per activation binding in program order, full tensors of the first images,
    fp32 logits of every image)."""
    inst = instrument(mod)
    vm, weight_args = cpu_vm(inst, weights)
    rng = np.random.default_rng(seed)
    returned = [i for i, v in enumerate(activation_vars(mod)) if v.same_as(mod[ENTRY].body.body)]
    lows, highs, samples, sums, full, logits = None, None, None, None, [], []
    for i, x in enumerate(tqdm(inputs, desc="calibrating", unit="img", mininterval=5)):
        outs = [t.numpy() for t in vm[ENTRY](tvm.runtime.tensor(x[None]), *weight_args)]
        if lows is None:
            lows = [np.inf] * len(outs)
            highs = [-np.inf] * len(outs)
            samples = [[] for _ in outs]
            sums = [np.zeros_like(_channel_sum(t)) for t in outs]
            per_image = [t.size // s.size for t, s in zip(outs, sums)]  # values per channel
        for j, t in enumerate(outs):
            flat = t.reshape(-1)
            lows[j] = min(lows[j], float(flat.min()))
            highs[j] = max(highs[j], float(flat.max()))
            take = rng.integers(0, flat.size, min(SAMPLES_PER_IMAGE, flat.size))
            samples[j].append(flat[take])
            sums[j] += _channel_sum(t)
        if i < KEEP_FULL_IMAGES:
            full.append(outs)
        logits.append(outs[returned[0]][0] if returned else np.zeros(0))
    stats = [TensorStats(lo, hi, np.concatenate(s).astype(np.float32), c / (n * len(inputs)))
             for lo, hi, s, c, n in zip(lows, highs, samples, sums, per_image)]
    return stats, full, np.stack(logits)


def _kl_threshold(values: np.ndarray, amax: float, levels: int, bins: int = 2048) -> float:
    """TensorRT's entropy calibration: the |x| clip threshold minimising KL(P || Q)."""
    # Exact zeros (ReLU's) are represented exactly at the zero point; left in, their spike
    # makes the smallest threshold look best and clips the whole tensor.
    magnitudes = np.abs(values[values != 0])
    if magnitudes.size == 0:
        return amax
    hist, edges = np.histogram(magnitudes, bins=bins, range=(0.0, amax))
    hist = hist.astype(np.float64)
    best, best_kl = amax, np.inf
    for i in range(levels, bins + 1, 8):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        nonzero = p > 0
        # Q: the first i bins merged into `levels` groups, spread back over non-empty bins.
        group = (np.arange(i) * levels) // i
        filled = hist[:i] > 0
        total = np.bincount(group, weights=hist[:i], minlength=levels)
        count = np.bincount(group, weights=filled, minlength=levels)
        q = np.where(filled, total[group] / np.maximum(count[group], 1), 0.0)
        p_n, q_n = p / p.sum(), q / max(q.sum(), 1e-12)
        kl = np.sum(p_n[nonzero] * np.log(p_n[nonzero] / np.maximum(q_n[nonzero], 1e-12)))
        if kl < best_kl:
            best_kl, best = kl, edges[i]
    return float(best)


def _mse_range(values: np.ndarray, lo: float, hi: float, levels: int) -> tuple[float, float]:
    """The shrink factor of [lo, hi] whose uniform quantization has the least squared error."""
    best, best_err = (lo, hi), np.inf
    for factor in np.linspace(0.2, 1.0, 41):
        a, b = lo * factor, hi * factor
        scale = max(b - a, 1e-8) / levels
        q = np.clip(np.round((values - a) / scale), 0, levels) * scale + a
        err = float(np.mean((q - values) ** 2))
        if err < best_err:
            best_err, best = err, (a, b)
    return best


def choose_range(stats: TensorStats, mode: str, nbit: int, percentile: float) -> tuple[float, float]:
    """The real range [lo, hi] to quantize a tensor to, by calibrate mode."""
    lo, hi = min(stats.minimum, 0.0), max(stats.maximum, 0.0)
    if mode in ("max", "global_scale"):
        return lo, hi
    values = stats.samples.astype(np.float64)
    if mode == "percentile":
        hi_p = float(np.percentile(values, percentile))
        lo_p = float(np.percentile(values, 100.0 - percentile)) if lo < 0 else 0.0
        return min(lo_p, 0.0), max(hi_p, 1e-8)
    if mode == "kl_divergence":
        amax = max(-lo, hi)
        levels = 2 ** nbit - 1 if lo >= 0 else 2 ** (nbit - 1) - 1
        t = _kl_threshold(values, amax, levels)
        return max(lo, -t), min(hi, t)
    if mode == "mse":
        return _mse_range(values, lo, hi, 2 ** nbit - 1)
    raise ValueError(mode)
