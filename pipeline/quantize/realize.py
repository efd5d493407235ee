"""Rewrite the fp32 Relax graph into real int8 arithmetic (uint8 activations x int8 weights).

Per-op rules live in `RULES` (keyed by Relax op name, as ONNX Runtime's quantizer keys its
registry by op type). Layers (`units.Unit`: conv2d/matmul + bias + ReLU/ReLU6) become
`conv2d|matmul(uint8, int8, out_dtype="int32")` + int32 bias (zero-point compensation folded
in) + a requantize epilogue (float32 multiplier, or int64 fixed point: `QConfig.requantize`)
with the activation as a clamp. Residual adds rescale both operands, max pool runs on uint8,
global average pool is an int32 sum of the uint8 tensor then requantize. Ops without a rule
run in float32 between dequantize/quantize. The arithmetic is exactly `arithmetic.py`'s
(tested bit for bit).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from ..errors import TvmqError
from ..relax_io import ENTRY, num_inputs
from .arithmetic import (QParams, activation_qparams, add_multiplier, float_multipliers,
                         is_power_of_two, layer_multipliers, quantize_weight, weight_scales)
from .config import QConfig
from .units import Unit, find_units, op_name, prim_float


ROUND_FUNC = "round_half_even"  # the PrimFunc's name (matched by `pipeline.requantize`)


def round_half_even_te(x):
    """Elementwise `tir.round`, which LLVM code rounds half to even (`llvm.nearbyint`). Relax's
    own `round` legalizes to `tir.nearbyint`, which TVM's vectorizer can leave as scalar
    gathers (~10x slower in a plain loop)."""
    from tvm import te, tirx

    return te.compute(x.shape, lambda *i: tirx.round(x(*i)), name="round_half_even")


def widening_sum_te(x, axes: list[int], keepdims: bool):
    """int32 sum of a uint8 tensor over `axes`, widening each element as it is read. Relax's
    sum(astype(x, int32)) fuses the widening into the producer, which then writes 4 bytes per
    element (EfficientNet-Lite0's last conv: 250 KB of int32 instead of 62 KB of uint8) for
    the sum to read back."""
    from tvm import te

    shape = [int(d) for d in x.shape]
    reduce = {a % len(shape): te.reduce_axis((0, shape[a]), f"r{a % len(shape)}") for a in axes}
    kept = [a for a in range(len(shape)) if a not in reduce]
    out = [1 if a in reduce else d for a, d in enumerate(shape)] if keepdims else \
        [shape[a] for a in kept]

    def total(*index):
        at = dict(enumerate(index)) if keepdims else dict(zip(kept, index))
        return te.sum(x(*[reduce.get(a, at.get(a)) for a in range(len(shape))]).astype("int32"),
                      axis=list(reduce.values()))

    return te.compute(out, total, name="widening_sum")


RULES = {}
ADD_SHIFT = 24  # fractional bits of the residual-add rescale multipliers


def rule(*ops):
    """Register a realization rule: `fn(realizer, binding) -> bool` (False = run in float)."""
    def register(fn):
        for op in ops:
            RULES[op] = fn
        return fn
    return register


@dataclass
class LayerRecord:
    """One row of the per-layer quantization report."""

    name: str
    op: str
    in_dtype: str
    out_dtype: str
    in_scale: float | None = None
    in_zero_point: int | None = None
    out_scale: float | None = None
    out_zero_point: int | None = None
    weight_scale_min: float | None = None
    weight_scale_max: float | None = None
    multiplier_min: int | None = None
    multiplier_max: int | None = None
    shift_min: int | None = None
    shift_max: int | None = None
    range_lo: float | None = None
    range_hi: float | None = None
    kept_float: str = ""
    sqnr_db: float | None = None  # of the layer's output vs fp32 (includes upstream error)
    layer_sqnr_db: float | None = None  # of the noise this layer adds (output minus input noise)
    extra: dict = field(default_factory=dict)


class Realizer:
    """Walks `main`'s bindings once, emitting the int8 graph with a BlockBuilder."""

    def __init__(self, mod: tvm.IRModule, weights: dict[str, np.ndarray], ranges: dict,
                 cfg: QConfig, float_units: dict[str, str], probes: bool = False,
                 channel_means: dict | None = None):
        self.func = mod[ENTRY]
        self.n_in = num_inputs(mod)
        self.weights = weights
        self.weight_vars = set(self.func.params[self.n_in:])
        self.ranges, self.cfg, self.float_units, self.probes = ranges, cfg, float_units, probes
        self.channel_means = channel_means or {}
        self.bindings = list(self.func.body.blocks[0].bindings)
        self.units = find_units(self.func, self.weight_vars)
        self.unit_of_head = {u.members[0]: u for u in self.units}
        self.unit_members = {v for u in self.units for v in u.members}
        self.consumers: dict = {}
        for b in self.bindings:
            if isinstance(b.value, relax.Call):
                for arg in b.value.args:
                    self.consumers.setdefault(arg, []).append(b)
        self.returned = self.func.body.body
        self.bb = relax.BlockBuilder()
        self.floats: dict = {}  # old var -> new float32 expr
        self.quants: dict = {}  # old var -> (new uint8 expr, QParams)
        self.new_params: list[tuple[relax.Var, np.ndarray]] = []
        self.records: list[LayerRecord] = []
        self.probe_vars: list[tuple[str, relax.Var]] = []  # (name, var) to expose as float

    # ----- parameters, conversions -------------------------------------------------------
    def param(self, name: str, value: np.ndarray) -> relax.Var:
        value = np.ascontiguousarray(value)
        var = relax.Var(name, relax.TensorType(value.shape, str(value.dtype)))
        self.new_params.append((var, value))
        return var

    def emit(self, expr) -> relax.Var:
        return self.bb.emit(expr)

    def qparams(self, var) -> QParams:
        lo, hi = self.ranges[var]
        power2 = None
        if self.cfg.calibrate_mode == "global_scale":
            power2 = self.cfg.global_scale / 2 ** (self.cfg.nbit_input - 1)
        return activation_qparams(lo, hi, self.cfg.nbit_input, power2)

    def float_of(self, var):
        if var in self.floats:
            return self.floats[var]
        if var in self.weight_vars:
            new = self.param(var.name, self.weights[var.name])
        elif var in self.quants:
            q, qp = self.quants[var]
            centred = self.emit(relax.op.subtract(relax.op.astype(q, "int32"),
                                                  relax.const(qp.zero_point, "int32")))
            new = self.emit(relax.op.multiply(relax.op.astype(centred, "float32"),
                                              relax.const(qp.scale, "float32")))
        else:
            raise TvmqError(f"quantizer: no value for {var.name}; the graph is not in program order")
        self.floats[var] = new
        return new

    def quant_of(self, var) -> tuple[relax.Expr, QParams]:
        if var not in self.quants:
            qp = self.qparams(var)
            x = self.float_of(var)
            v = self.bb.emit_te(round_half_even_te,
                                self.emit(relax.op.divide(x, relax.const(qp.scale, "float32"))),
                                primfunc_name_hint=ROUND_FUNC)
            v = self.emit(relax.op.add(v, relax.const(float(qp.zero_point), "float32")))
            v = self.emit(relax.op.clip(v, qp.qmin, qp.qmax))
            self.quants[var] = (self.emit(relax.op.astype(v, "uint8")), qp)
        return self.quants[var]

    def feeds_int8_only(self, var) -> bool:
        """Whether every use of `var` ends in uint8 arithmetic: int8 layers, or pass-through
        ops (pad, pool, transpose, ...) whose results do. Such a float value (a layer kept in
        float) is quantized at once, so the pass-through ops move uint8, not float32."""
        if var.same_as(self.returned) or not self.consumers.get(var):
            return False
        for b in self.consumers[var]:
            unit = self.unit_of_head.get(b.var)
            if unit is not None:
                if not (unit.data.same_as(var) and unit.name not in self.float_units):
                    return False
            elif op_name(b.value) not in (*INT8_PASSTHROUGH, "relax.nn.pad"):
                return False
            elif not (b.value.args[0].same_as(var) and self.feeds_int8_only(b.var)):
                return False
        return True

    def takes_int8(self, var) -> bool:
        """Whether some consumer of `var` computes on uint8 (so produce it quantized)."""
        if var.same_as(self.returned):
            return False
        for b in self.consumers.get(var, []):
            unit = self.unit_of_head.get(b.var)
            if unit is not None:
                if unit.data.same_as(var) and unit.name not in self.float_units:
                    return True
            elif op_name(b.value) in RULES:
                return True
        return False

    # ----- integer epilogues -----------------------------------------------------------
    def shift_round(self, v, shift: int):
        """v * 2^-shift, rounded per cfg.rounding (the numpy twin: shift_right_rounded)."""
        right, left = max(shift, 0), max(-shift, 0)
        half = relax.const((1 << (right - 1)) if right else 0, "int64")
        if self.cfg.rounding == "upward":
            out = self.emit(relax.op.right_shift(relax.op.add(v, half), relax.const(right, "int64")))
        else:
            mag = self.emit(relax.op.right_shift(relax.op.add(relax.op.abs(v), half),
                                                 relax.const(right, "int64")))
            out = self.emit(relax.op.multiply(relax.op.sign(v), mag))
        if left:
            out = self.emit(relax.op.left_shift(out, relax.const(left, "int64")))
        return out

    def requantize(self, acc, multiplier: np.ndarray, qp: QParams, qlo: int, qhi: int,
                   chan_shape, name: str, record: LayerRecord):
        """int32 accumulator -> uint8 on grid `qp`, clamped to [qlo, qhi].

        Per-channel int32 multipliers with one shift per layer (`layer_multipliers`), or a pure
        shift when every multiplier is a power of two in global_scale mode (as Relay did).
        """
        multiplier = np.asarray(multiplier, np.float64).reshape(-1)
        shift_only = (self.cfg.calibrate_mode == "global_scale" and is_power_of_two(multiplier)
                      and np.all(multiplier == multiplier[0]))
        if self.cfg.requantize == "float32" and not shift_only:
            return self.requantize_float(acc, multiplier, qp, qlo, qhi, chan_shape, name, record)
        v = self.emit(relax.op.astype(acc, "int64"))
        if shift_only:
            shift = int(-np.log2(multiplier[0]))
            record.extra["requantize"] = "shift"
        else:
            m0, shift = layer_multipliers(multiplier)
            if np.all(m0 == m0[0]):
                m = relax.const(int(m0[0]), "int64")
            else:
                m = relax.op.astype(self.param(f"{name}_m0", m0.reshape(chan_shape)), "int64")
            v = self.emit(relax.op.multiply(v, m))
            record.multiplier_min, record.multiplier_max = int(m0.min()), int(m0.max())
            record.extra["requantize"] = "fixed_point"
        record.shift_min = record.shift_max = shift
        v = self.shift_round(v, shift)
        if qp.zero_point:
            v = self.emit(relax.op.add(v, relax.const(qp.zero_point, "int64")))
        v = self.emit(relax.op.clip(v, qlo, qhi))
        return self.emit(relax.op.astype(v, "uint8"))

    def requantize_float(self, acc, multiplier: np.ndarray, qp: QParams, qlo: int, qhi: int,
                         chan_shape, name: str, record: LayerRecord):
        """`requantize: float32`, exactly `arithmetic.requantize_float`: float32(acc) times the
        float32 multiplier (one per channel, or a constant), rounded half to even."""
        m32 = float_multipliers(multiplier)
        if np.all(m32 == m32[0]):
            m = relax.const(float(m32[0]), "float32")
        else:
            m = self.param(f"{name}_m", m32.reshape(chan_shape))
        v = self.emit(relax.op.multiply(relax.op.astype(acc, "float32"), m))
        v = self.bb.emit_te(round_half_even_te, v, primfunc_name_hint=ROUND_FUNC)
        if qp.zero_point:
            v = self.emit(relax.op.add(v, relax.const(float(qp.zero_point), "float32")))
        v = self.emit(relax.op.clip(v, qlo, qhi))
        record.extra["requantize"] = "float32"
        record.extra["multiplier_min"], record.extra["multiplier_max"] = (
            float(m32.min()), float(m32.max()))
        return self.emit(relax.op.astype(v, "uint8"))

    # ----- the walk -----------------------------------------------------------------------
    def float_op(self, binding) -> None:
        call = binding.value
        if not isinstance(call, relax.Call):
            raise TvmqError(f"quantizer: binding {binding.var.name} is a {type(call).__name__}, "
                            "not an op call; only single-output graphs of op calls are supported.")
        args = [self.float_of(a) if isinstance(a, relax.Var) else a for a in call.args]
        self.floats[binding.var] = self.emit(relax.Call(call.op, args, call.attrs, call.ty_args))

    def run(self) -> tuple[tvm.IRModule, dict[str, np.ndarray], list[LayerRecord]]:
        inputs = [relax.Var(p.name, p.ty) for p in self.func.params[:self.n_in]]
        for old, new in zip(self.func.params[:self.n_in], inputs):
            self.floats[old] = new
        with self.bb.function(ENTRY, inputs):
            with self.bb.dataflow():
                for b in self.bindings:
                    if b.var in self.unit_of_head:
                        realize_unit(self, self.unit_of_head[b.var])
                    elif b.var in self.unit_members:
                        continue
                    elif not RULES.get(op_name(b.value), lambda *_: False)(self, b):
                        self.float_op(b)
                result = self.float_of(self.returned)
                if self.probes:
                    result = relax.Tuple([result] + [self.float_of(v) for _, v in self.probe_vars])
                out = self.bb.emit_output(result)
            self.bb.emit_func_output(out)
        built = self.bb.get()
        body_func = built[ENTRY]
        params = inputs + [v for v, _ in self.new_params]
        func = relax.Function(params, body_func.body, body_func.ret_ty, True, self.func.attrs)
        qmod = tvm.IRModule(dict(built.functions_items()))  # main + PrimFuncs (round_half_even)
        qmod[ENTRY] = func
        qmod = relax.transform.Normalize()(qmod)
        return qmod, {v.name: a for v, a in self.new_params}, self.records


def _conv_attrs(call):
    a = call.attrs
    return dict(strides=[int(s) for s in a.strides], padding=[int(p) for p in a.padding],
                dilation=[int(d) for d in a.dilation], groups=int(a.groups))


def realize_unit(r: Realizer, u: Unit) -> None:
    """conv2d/matmul + bias + activation -> int8 x uint8 -> int32 -> requantize (or float)."""
    record = LayerRecord(u.name, u.kind, "float32", "float32")
    r.records.append(record)
    if u.name in r.float_units:
        record.kept_float = r.float_units[u.name]
        for var in u.members:
            r.float_op(next(b for b in r.bindings if b.var.same_as(var)))
        if r.feeds_int8_only(u.out):
            r.quant_of(u.out)
        return
    cfg = r.cfg
    xq, qx = r.quant_of(u.data)
    w = r.weights[u.weight.name]
    axis = 0 if u.kind == "conv2d" else 1
    channels = w.shape[axis]
    sw = weight_scales(w, axis if cfg.per_channel else None, cfg.nbit_weight,
                       cfg.weight_scale == "power2")
    sw = np.broadcast_to(sw, (channels,)).astype(np.float64)
    bias = r.weights[u.bias.name].reshape(-1).astype(np.float64) if u.bias is not None else None
    if bias is not None:
        # A (near-)dead channel's tiny weight scale would overflow its int32 bias: widen it
        # just enough (TFLite does the same), which costs that channel nothing.
        sw = np.maximum(sw, np.abs(bias) / (qx.scale * 2.0 ** 30))
    wq = quantize_weight(w, sw, axis, cfg.nbit_weight)
    if cfg.bias_correction and u.data in r.channel_means:
        shift = weight_error_shift(u, w, wq, sw, r.channel_means[u.data])
        bias = -shift if bias is None else bias - shift
        record.extra["bias_correction_max"] = float(np.abs(shift).max())
    if u.kind == "conv2d":
        attrs = _conv_attrs(u.call)
        if any(attrs["padding"]) and qx.zero_point:
            top, left, bottom, right = attrs["padding"]
            xq = r.emit(relax.op.nn.pad(xq, [0, 0, 0, 0, top, bottom, left, right],
                                        pad_value=float(qx.zero_point)))
            attrs["padding"] = [0, 0, 0, 0]
        acc = r.emit(relax.op.nn.conv2d(xq, r.param(f"{u.name}_wq", wq), out_dtype="int32", **attrs))
        weight_sums = wq.astype(np.int64).sum(axis=(1, 2, 3))
        chan_shape = (1, channels, 1, 1)
    else:
        acc = r.emit(relax.op.matmul(xq, r.param(f"{u.name}_wq", wq), out_dtype="int32"))
        weight_sums = wq.astype(np.int64).sum(axis=0)
        chan_shape = (1, channels)
    acc_scale = qx.scale * sw
    bias_q = -qx.zero_point * weight_sums
    if bias is not None:
        bias_q = bias_q + np.round(bias / acc_scale).astype(np.int64)
    if np.abs(bias_q).max(initial=0) >= 2 ** 31:
        raise TvmqError(f"quantizer: int32 bias of layer {u.name} overflows; keep it in float "
                        f"(quantize.skip_conv_layers) or widen its calibration range.")
    if np.any(bias_q):
        acc = r.emit(relax.op.add(acc, r.param(f"{u.name}_bq", bias_q.astype(np.int32).reshape(chan_shape))))
    record.in_dtype, record.in_scale, record.in_zero_point = "uint8", qx.scale, qx.zero_point
    record.weight_scale_min, record.weight_scale_max = float(sw.min()), float(sw.max())
    if r.takes_int8(u.out):
        qy = r.qparams(u.out)
        lo, hi = u.activation or (None, None)
        qlo, qhi = qy.clamp_range(lo, hi)
        y = r.requantize(acc, acc_scale / qy.scale, qy, qlo, qhi, chan_shape, u.name, record)
        r.quants[u.out] = (y, qy)
        record.out_dtype, record.out_scale, record.out_zero_point = "uint8", qy.scale, qy.zero_point
    else:
        f = r.emit(relax.op.multiply(relax.op.astype(acc, "float32"),
                                     r.param(f"{u.name}_scale", acc_scale.astype(np.float32).reshape(chan_shape))))
        if u.activation is not None:
            lo, hi = u.activation
            f = r.emit(relax.op.nn.relu(f) if hi is None else relax.op.clip(f, lo, hi))
        r.floats[u.out] = f
    record.range_lo, record.range_hi = (float(v) for v in r.ranges[u.out])
    r.probe_vars += [(f"{u.name}:input", u.data), (u.name, u.out)]


def weight_error_shift(u: Unit, w, wq, sw, input_mean) -> np.ndarray:
    """Mean output shift caused by weight rounding: sum(w_q * s - w) * E[x] per output channel.

    Subtracting it from the bias is analytic bias correction (Nagel et al., "Data-Free
    Quantization", 2019); it matters for depthwise layers with few weights per channel.
    """
    if u.kind == "dense":
        error = wq.astype(np.float64) * sw[None, :] - w
        return error.T @ input_mean
    error = (wq.astype(np.float64) * sw[:, None, None, None] - w).sum(axis=(2, 3))  # (O, I/g)
    out_per_group = w.shape[0] // int(u.call.attrs.groups)
    group = np.arange(w.shape[0]) // out_per_group
    index = group[:, None] * w.shape[1] + np.arange(w.shape[1])[None, :]
    return (error * input_mean[index]).sum(axis=1)


INT8_PASSTHROUGH = ("relax.nn.max_pool2d", "relax.permute_dims", "relax.reshape", "relax.clip",
                    "relax.nn.relu")


@rule(*INT8_PASSTHROUGH)
def realize_passthrough(r: Realizer, b) -> bool:
    """Ops exact on the quantized grid: max pool, layout/shape ops, clamps (same scale)."""
    x = b.value.args[0]
    if x not in r.quants:
        return False
    q, qp = r.quants[x]
    op = op_name(b.value)
    if op == "relax.clip":
        lo, hi = qp.clamp_range(prim_float(b.value.args[1]), prim_float(b.value.args[2]))
        y = relax.op.clip(q, lo, hi)
    elif op == "relax.nn.relu":
        y = relax.op.clip(q, qp.clamp_range(0.0, None)[0], qp.qmax)
    else:
        y = relax.Call(b.value.op, [q, *b.value.args[1:]], b.value.attrs, b.value.ty_args)
    r.quants[b.var] = (r.emit(y), qp)
    return True


@rule("relax.nn.pad")
def realize_pad(r: Realizer, b) -> bool:
    """Zero padding (Keras ZeroPadding2D) on uint8: real 0 is the zero point."""
    x = b.value.args[0]
    attrs = b.value.attrs
    if x not in r.quants or attrs.pad_mode != "constant" or float(attrs.pad_value) != 0.0:
        return False
    q, qp = r.quants[x]
    padded = relax.op.nn.pad(q, [int(p) for p in attrs.pad_width], pad_value=float(qp.zero_point))
    r.quants[b.var] = (r.emit(padded), qp)
    return True


@rule("relax.add")
def realize_add(r: Realizer, b) -> bool:
    """Residual add: both operands rescaled to the output grid (float32 with exact products, or
    int64 fixed point, per `requantize`), summed, then rounded."""
    a, c = b.value.args
    if not all(isinstance(v, relax.Var) and v not in r.weight_vars for v in (a, c)):
        return False
    if a not in r.quants and c not in r.quants:
        return False
    (qa, pa), (qc, pc) = r.quant_of(a), r.quant_of(c)
    py = r.qparams(b.var)
    record = LayerRecord(f"add{sum(rec.op == 'add' for rec in r.records)}", "add", "uint8", "uint8",
                         in_scale=pa.scale, in_zero_point=pa.zero_point, out_scale=py.scale,
                         out_zero_point=py.zero_point)
    r.records.append(record)
    if r.cfg.requantize == "float32":  # exactly arithmetic.add_float
        terms = []
        for q, p in ((qa, pa), (qc, pc)):
            centred = relax.op.subtract(relax.op.astype(q, "float32"),
                                        relax.const(float(p.zero_point), "float32"))
            m = float(add_multiplier(p.scale / py.scale))
            terms.append(r.emit(relax.op.multiply(centred, relax.const(m, "float32"))))
        v = r.emit(relax.op.add(*terms))
        v = r.bb.emit_te(round_half_even_te, v, primfunc_name_hint=ROUND_FUNC)
        v = r.emit(relax.op.clip(relax.op.add(v, relax.const(float(py.zero_point), "float32")),
                                 py.qmin, py.qmax))
        record.extra["requantize"] = "float32"
    else:
        terms = []
        for q, p in ((qa, pa), (qc, pc)):
            m = int(np.round(p.scale / py.scale * 2 ** ADD_SHIFT))
            centred = relax.op.subtract(relax.op.astype(q, "int64"),
                                        relax.const(p.zero_point, "int64"))
            terms.append(r.emit(relax.op.multiply(centred, relax.const(m, "int64"))))
        v = r.emit(relax.op.add(*terms))
        v = r.shift_round(v, ADD_SHIFT)
        v = r.emit(relax.op.clip(relax.op.add(v, relax.const(py.zero_point, "int64")),
                                 py.qmin, py.qmax))
        record.extra["requantize"] = "fixed_point"
    r.quants[b.var] = (r.emit(relax.op.astype(v, "uint8")), py)
    record.range_lo, record.range_hi = (float(x) for x in r.ranges[b.var])
    r.probe_vars += [(f"{record.name}:input", a), (f"{record.name}:input2", c), (record.name, b.var)]
    return True


@rule("relax.mean")
def realize_mean(r: Realizer, b) -> bool:
    """Global average pool: int32 sum, zero point removed, then requantize (or to float)."""
    x = b.value.args[0]
    if x not in r.quants:
        return False
    q, qp = r.quants[x]
    axes = [int(i) for i in b.value.attrs.axis]
    shape = [int(d) for d in x.ty.shape]
    count = int(np.prod([shape[i] for i in axes]))
    s = r.bb.emit_te(widening_sum_te, q, axes, bool(b.value.attrs.keepdims),
                     primfunc_name_hint="widening_sum")
    if qp.zero_point:
        s = r.emit(relax.op.subtract(s, relax.const(qp.zero_point * count, "int32")))
    record = LayerRecord(f"mean{sum(rec.op == 'mean' for rec in r.records)}", "mean", "uint8", "float32",
                         in_scale=qp.scale, in_zero_point=qp.zero_point)
    r.records.append(record)
    if r.takes_int8(b.var):
        py = r.qparams(b.var)
        r.quants[b.var] = (r.requantize(s, np.array([qp.scale / (count * py.scale)]), py, py.qmin,
                                        py.qmax, None, record.name, record), py)
        record.out_dtype, record.out_scale, record.out_zero_point = "uint8", py.scale, py.zero_point
    else:
        r.floats[b.var] = r.emit(relax.op.multiply(relax.op.astype(s, "float32"),
                                                   relax.const(qp.scale / count, "float32")))
    record.range_lo, record.range_hi = (float(v) for v in r.ranges[b.var])
    return True
