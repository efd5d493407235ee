"""The quantizer driver: calibrate, choose ranges, realize, measure, keep sensitive layers float."""
from __future__ import annotations

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from ..relax_io import ENTRY, num_inputs
from .calibrate import activation_bindings, choose_range, collect
from .config import QConfig, current_qconfig
from .realize import Realizer, find_units


def ranges_for(mod: tvm.IRModule, stats, cfg: QConfig) -> dict:
    """Calibrated [lo, hi] per activation var of `main`."""
    return {b.var: choose_range(s, cfg.calibrate_mode, cfg.nbit_input, cfg.percentile)
            for b, s in zip(activation_bindings(mod), stats)}


def default_float_units(mod: tvm.IRModule, cfg: QConfig) -> dict[str, str]:
    """Layers kept in float32 by skip_conv_layers / skip_dense_layer, with the reason."""
    n_in = num_inputs(mod)
    units = find_units(mod[ENTRY], set(mod[ENTRY].params[n_in:]))
    keep = {}
    for u in units:
        if u.kind == "conv2d" and u.index in cfg.skip_conv_layers:
            keep[u.name] = f"skip_conv_layers includes {u.index}"
        if u.kind == "dense" and cfg.skip_dense_layer:
            keep[u.name] = "skip_dense_layer"
    return keep


def _vm(mod):
    return relax.VirtualMachine(tvm.compile(mod, tvm.target.Target("llvm")), tvm.cpu())


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)


def channel_means_for(mod: tvm.IRModule, stats) -> dict:
    return {b.var: s.channel_mean for b, s in zip(activation_bindings(mod), stats)}


def layer_sqnr(make_realizer, mod, calibration, full) -> dict[str, float]:
    """SQNR (dB) of each quantized layer's output vs fp32 on the first calibration images."""
    realizer = make_realizer(probes=True)
    probe_mod, probe_w, _ = realizer.run()
    names = [(name, var) for name, var, _ in realizer.probe_vars]
    position = {b.var: i for i, b in enumerate(activation_bindings(mod))}
    vm = _vm(probe_mod)
    args = [tvm.runtime.tensor(probe_w[p.name]) for p in probe_mod[ENTRY].params[num_inputs(probe_mod):]]
    ref, got = {n: [] for n, _ in names}, {n: [] for n, _ in names}
    for i, reference in enumerate(full):
        outs = vm[ENTRY](tvm.runtime.tensor(calibration[i][None]), *args)
        for k, (name, var) in enumerate(names):
            got[name].append(outs[k + 1].numpy())
            ref[name].append(reference[position[var]])
    return {n: sqnr_db(np.stack(ref[n]), np.stack(got[n])) for n, _ in names}


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
            vm = _vm(qmod)
            args = [tvm.runtime.tensor(qparams[p.name]) for p in qmod[ENTRY].params[num_inputs(qmod):]]
            agree = float(np.mean(top1(vm, args, calibration, f"budget check {step}") == reference))
            summary[f"budget_step{step}_agreement"] = agree
            if 1.0 - agree <= cfg.accuracy_budget or step == cfg.max_float_layers:
                break
            candidates = {n: v for n, v in sqnr.items()
                          if n not in float_units and not n.startswith(("add", "mean"))}
            if not candidates:
                break
            worst = min(candidates, key=candidates.get)
            float_units[worst] = (f"accuracy_budget: lowest SQNR ({candidates[worst]:.1f} dB) while "
                                  f"agreement was {agree:.3f}")
        summary["calibration_agreement_top1"] = agree
    qmod, qparams, records = make_realizer().run()
    for rec in records:
        rec.sqnr_db = None if rec.name not in sqnr else round(float(sqnr[rec.name]), 3)
        if rec.kept_float:
            rec.sqnr_db = None
    summary["float_layers"] = sorted(float_units)
    return qmod, qparams, records, summary


def quantize(mod: tvm.IRModule, params: dict[str, np.ndarray], calibration: np.ndarray):
    """The seed's API: `with qconfig(...): qmod, qparams = quantize(mod, params, calibration=x)`."""
    qmod, qparams, _, _ = quantize_with_report(mod, params, calibration)
    return qmod, qparams
