"""The quantizer driver: calibrate, choose ranges, realize, measure, keep sensitive layers float."""
from __future__ import annotations

import numpy as np
import tvm
from tqdm import tqdm

from ..compile import cpu_vm
from ..relax_io import ENTRY, weight_params
from .calibrate import activation_vars, choose_range, collect
from .config import QConfig, current_qconfig
from .realize import Realizer, find_units


def ranges_for(mod: tvm.IRModule, stats, cfg: QConfig) -> dict:
    """Calibrated [lo, hi] per calibration point (input or activation var) of `main`."""
    return {v: choose_range(s, cfg.calibrate_mode, cfg.nbit_input, cfg.percentile)
            for v, s in zip(activation_vars(mod), stats)}


def default_float_units(mod: tvm.IRModule, cfg: QConfig) -> dict[str, str]:
    """Layers kept in float32 by skip_conv_layers / skip_dense_layer, with the reason."""
    units = find_units(mod[ENTRY], set(weight_params(mod)))
    keep = {}
    for u in units:
        if u.kind == "conv2d" and u.index in cfg.skip_conv_layers:
            keep[u.name] = f"skip_conv_layers includes {u.index}"
        if u.kind == "dense" and cfg.skip_dense_layer:
            keep[u.name] = "skip_dense_layer"
    return keep


def channel_means_for(mod: tvm.IRModule, stats) -> dict:
    return {v: s.channel_mean for v, s in zip(activation_vars(mod), stats)}


def layer_sqnr(make_realizer, mod, calibration, full) -> dict[str, tuple[float, float]]:
    """Per quantized layer: (SQNR of its output vs fp32, SQNR of the noise it adds), in dB.

    Measured on the first calibration images with every layer's input and output exposed. The
    noise a layer adds is its output noise power minus its input's (relative to the signal):
    the measured per-layer error that accuracy_budget ranks layers by.
    """
    realizer = make_realizer(probes=True)
    probe_mod, probe_w, _ = realizer.run()
    position = {v: i for i, v in enumerate(activation_vars(mod))}
    vm, args = cpu_vm(probe_mod, probe_w)
    ref = {n: [] for n, _ in realizer.probe_vars}
    got = {n: [] for n, _ in realizer.probe_vars}
    for i, reference in enumerate(full):
        outs = vm[ENTRY](tvm.runtime.tensor(calibration[i][None]), *args)
        for k, (name, var) in enumerate(realizer.probe_vars):
            got[name].append(outs[k + 1].numpy())
            ref[name].append(reference[position[var]] if var in position else got[name][-1])
    noise = {n: relative_noise(np.stack(ref[n]), np.stack(got[n])) for n in ref}
    result = {}
    for name in (n for n in noise if ":" not in n):
        inputs = [noise[n] for n in noise if n.startswith(f"{name}:input")]
        added = max(noise[name] - max(inputs, default=0.0), 1e-12)
        result[name] = (to_db(noise[name]), to_db(added))
    return result


def relative_noise(reference: np.ndarray, approx: np.ndarray) -> float:
    """Noise power over signal power."""
    reference = reference.astype(np.float64)
    return float(np.sum((reference - approx) ** 2) / max(float(np.sum(reference ** 2)), 1e-30))


def to_db(ratio: float) -> float:
    return float("inf") if ratio <= 0 else float(-10.0 * np.log10(ratio))


def top1(vm, args, xs, desc) -> np.ndarray:
    return np.array([int(np.argmax(vm[ENTRY](tvm.runtime.tensor(x[None]), *args).numpy()))
                     for x in tqdm(xs, desc=desc, unit="img", mininterval=5)])


def quantize_with_report(mod: tvm.IRModule, params: dict[str, np.ndarray], calibration: np.ndarray,
                         cfg: QConfig | None = None, stats=None):
    """Quantize `mod`; returns (qmod, qparams, per-layer records, summary dict).

    `stats` = `calibrate.collect(...)` output, to reuse a cached calibration run.
    """
    cfg = cfg or current_qconfig()
    stats, full, fp32_logits = stats or collect(mod, params, calibration)
    ranges = ranges_for(mod, stats, cfg)
    means = channel_means_for(mod, stats)
    float_units = default_float_units(mod, cfg)

    def make_realizer(probes=False):
        return Realizer(mod, params, ranges, cfg, float_units, probes, means)

    summary = {"calibration_images": int(len(calibration))}
    sqnr = layer_sqnr(make_realizer, mod, calibration, full)
    if cfg.accuracy_budget is not None:
        reference = fp32_logits.argmax(axis=1)
        for step in range(cfg.max_float_layers + 1):
            qmod, qparams, _ = make_realizer().run()
            vm, args = cpu_vm(qmod, qparams)
            agree = float(np.mean(top1(vm, args, calibration, f"budget check {step}") == reference))
            summary[f"budget_step{step}_agreement"] = agree
            if 1.0 - agree <= cfg.accuracy_budget or step == cfg.max_float_layers:
                break
            candidates = {n: v[1] for n, v in sqnr.items()
                          if n not in float_units and not n.startswith(("add", "mean"))}
            if not candidates:
                break
            worst = min(candidates, key=candidates.get)
            summary.setdefault("budget_float_order", []).append(worst)
            float_units[worst] = (f"accuracy_budget: adds the most noise ({candidates[worst]:.1f} dB "
                                  f"layer SQNR) while agreement was {agree:.3f}")
            sqnr = layer_sqnr(make_realizer, mod, calibration, full)
        summary["calibration_agreement_top1"] = agree
    qmod, qparams, records = make_realizer().run()
    for rec in records:
        if rec.name in sqnr and not rec.kept_float:
            rec.sqnr_db, rec.layer_sqnr_db = (round(v, 3) for v in sqnr[rec.name])
    summary["float_layers"] = sorted(float_units)
    return qmod, qparams, records, summary


def quantize(mod: tvm.IRModule, params: dict[str, np.ndarray], calibration: np.ndarray):
    """The seed's API: `with qconfig(...): qmod, qparams = quantize(mod, params, calibration=x)`."""
    qmod, qparams, _, _ = quantize_with_report(mod, params, calibration)
    return qmod, qparams
