"""Keras -> TFLite flatbuffer -> Relax, in NCHW with the weights lifted out as parameters.

TVM >= 0.20 has no Relay and no Keras importer; the TFLite importer is the maintained path
from a Keras model into Relax (this is the "to_relay" step of older TVM write-ups).
"""
from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import relax

from .errors import TvmqError


ENTRY = "main"


def _layers_named_in(text: str, model) -> list[str]:
    """Keras layers whose name is a path component of a TF/TFLite op or tensor name in `text`.

    Traced names look like `model_1/block3a_dwconv_1/depthwise`: Keras may append `_N`.
    """
    found = []
    for layer in model.layers:
        if re.search(rf"(^|/|\"){re.escape(layer.name)}(_\d+)?(/|;|\"|:|$)", text, re.M):
            found.append(f"'{layer.name}' ({type(layer).__name__})")
    return found


class ConversionFailure(Exception):
    """A TFLite operator that TVM's importer has no converter for, or whose converter failed."""

    def __init__(self, op_code: str, tensor_names: list[str], cause: Exception):
        super().__init__(f"{op_code}: {type(cause).__name__}: {cause}")
        self.op_code, self.tensor_names, self.cause = op_code, tensor_names, cause


def _locating_converter():
    """TVM's OperatorConverter, made to say which operator (and tensors) a failure came from."""
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter, get_tensor_name

    class LocatingConverter(OperatorConverter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for code, convert in list(self.convert_map.items()):
                self.convert_map[code] = self._locating(code, convert)

        def _names(self, op) -> list[str]:
            """Output tensor names, then the op's weight names (a model output is unnamed)."""
            outputs = [t.tensor_idx for t in self.get_output_tensors(op)]
            weights = [t.tensor_idx for t in self.get_input_tensors(op)[1:]]
            return [get_tensor_name(self.subgraph, i) for i in outputs + weights]

        def _locating(self, code, convert):
            def run(op):
                try:
                    return convert(op=op)
                except Exception as err:
                    raise ConversionFailure(code, self._names(op), err) from err
            return run

        def check_unsupported_ops(self):
            for i in range(self.subgraph.OperatorsLength()):
                op = self.subgraph.Operators(i)
                code = self.get_op_code_str(op)
                if code not in self.convert_map:
                    raise ConversionFailure(code, self._names(op),
                                            NotImplementedError("TVM has no converter for it"))
            super().check_unsupported_ops()

    return LocatingConverter


def keras_to_tflite(model) -> bytes:
    """Convert a Keras model to a float32 TFLite flatbuffer (builtin ops only, batch 1)."""
    import tensorflow as tf

    # A static batch of 1 lets TFLite fold shape arithmetic (Flatten/Reshape with a dynamic
    # batch becomes a Shape->Pack->Reshape chain that TVM's importer cannot convert).
    import keras

    inputs = [keras.Input(batch_shape=(1, *i.shape[1:]), dtype=i.dtype, name=i.name.split(":")[0])
              for i in model.inputs]
    batch1 = keras.Model(inputs, model(inputs if len(inputs) > 1 else inputs[0]), name=model.name)
    converter = tf.lite.TFLiteConverter.from_keras_model(batch1)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        return converter.convert()
    except Exception as err:  # the converter raises ConverterError / various TF errors
        text = str(err)
        layers = _layers_named_in(text, model) or ["(layer not identified)"]
        first = next((line for line in text.splitlines() if "error" in line.lower()), text[:300])
        raise TvmqError(
            f"TFLite cannot convert Keras model '{model.name}': layer(s) {', '.join(layers)} "
            f"use an op outside TFLite's builtin set ({first.strip()}). Replace the layer with "
            "standard Keras layers (Conv2D, DepthwiseConv2D, Dense, pooling, ReLU/ReLU6, Add, ...) "
            "or pick another model."
        ) from None


def tflite_to_relax(flatbuffer: bytes, model=None) -> tvm.IRModule:
    """Import a TFLite flatbuffer with TVM's frontend; drop the importer's duplicate params attr.

    `model` (the Keras source) lets a failure name the Keras layer it came from.
    """
    import tflite
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.tflite import from_tflite

    try:
        mod = from_tflite(tflite.Model.GetRootAsModel(flatbuffer, 0), op_converter=_locating_converter())
    except ConversionFailure as failure:
        layers = []
        for name in failure.tensor_names if model is not None else []:
            layers = layers or _layers_named_in(name, model)
        where = ", ".join(layers) or f"producing tensors {failure.tensor_names}"
        raise TvmqError(
            f"TVM's TFLite importer cannot convert layer {where}: TFLite operator "
            f"{failure.op_code} failed ({type(failure.cause).__name__}: "
            f"{str(failure.cause).strip().splitlines()[-1] if str(failure.cause).strip() else ''}). "
            "Replace the layer with standard Keras layers (Conv2D, DepthwiseConv2D, Dense, "
            "pooling, ReLU/ReLU6, Add, ...) or pick another model."
        ) from None
    mod, _ = detach_params(mod)
    return mod


def _rewrite_calls(mod: tvm.IRModule, rewrite) -> tvm.IRModule:
    """Apply `rewrite(call, mutator) -> Expr | None` bottom-up to every call of every function.

    `mutator.builder_` emits helper bindings; `mutator.lookup_binding(var)` sees through ANF.
    """

    @relax.expr_functor.mutator
    class Mutator(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            new = rewrite(call, self)
            return call if new is None else new

    mutator = Mutator(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def is_op(call, name: str) -> bool:
    return isinstance(call, relax.Call) and call.op == tvm.ir.Op.get(name)


def scalar_value(expr) -> float | int | None:
    """The number in a rank-0 constant, else None."""
    if isinstance(expr, tvm.ir.GenericConst) and expr.ty.ndim == 0:
        return expr.value.numpy().item()
    return None


@tvm.transform.module_pass(opt_level=0, name="ReshapeBiasToRank4")
def reshape_bias_to_rank4(mod, _ctx):
    """Give rank-1 constants added to rank-4 tensors the shape (1,1,1,C).

    ConvertLayout cannot move a rank-1 bias to NCHW, so without this every conv+bias pair keeps
    a transpose on each side (~100 permute_dims on ResNet50).
    """

    def rewrite(call, _mutator):
        if not is_op(call, "relax.add"):
            return None
        args = list(call.args)
        for i, arg in enumerate(args):
            if (
                isinstance(arg, tvm.ir.GenericConst)
                and arg.ty.ndim == 1
                and args[1 - i].ty.ndim == 4
            ):
                value = arg.value.numpy()
                args[i] = relax.const(value.reshape(1, 1, 1, -1), str(value.dtype))
                return relax.Call(call.op, args, call.attrs)
        return None

    return _rewrite_calls(mod, rewrite)


def _spatial_zero_pad(pad, layout: str) -> list[int] | None:
    """(top, left, bottom, right) of a constant-zero `nn.pad` over only the H and W axes of
    `layout`, else None."""
    if (not is_op(pad, "relax.nn.pad") or pad.attrs.pad_mode != "constant"
            or float(pad.attrs.pad_value) != 0.0):
        return None
    widths = [int(v) for v in pad.attrs.pad_width]  # (before, after) per axis
    h, w = layout.index("H"), layout.index("W")
    if any(widths[2 * axis:2 * axis + 2] != [0, 0] for axis in range(4) if axis not in (h, w)):
        return None
    return [widths[2 * h], widths[2 * w], widths[2 * h + 1], widths[2 * w + 1]]


def _non_negative(expr) -> bool:
    """The output of a ReLU (or a clip from 0 up): no element below zero."""
    return is_op(expr, "relax.nn.relu") or (
        is_op(expr, "relax.clip") and float(expr.args[1].value) >= 0)


@tvm.transform.module_pass(opt_level=0, name="FoldZeroPadding")
def fold_zero_padding(mod, _ctx):
    """conv2d(pad(x, zeros around H and W)) -> conv2d(x) with that padding added to its own;
    the same for a max pool of a ReLU's output (no zero there beats a window's maximum, so
    the pool's own padding, which never wins either, gives the same result).

    Keras' ZeroPadding2D before a 'valid' conv or pool (ResNet50's stem and max pool) is their
    own padding, which the packed kernels apply while copying their input: the pad pass over
    the map goes (the stem's pad+transpose becomes a plain transpose: 0.11 -> 0.04 ms), and a
    pool without a pad in front follows its input into NCHW instead of sitting between two
    transposes (`packed_conv.packed_max_pool2d` runs it there).
    """

    def rewrite(call, mutator):
        conv = is_op(call, "relax.nn.conv2d")
        if not conv and not is_op(call, "relax.nn.max_pool2d"):
            return None
        a = call.attrs
        pad = mutator.lookup_binding(call.args[0])
        extra = _spatial_zero_pad(pad, str(a.data_layout if conv else a.layout))
        if extra is None or not (conv or _non_negative(mutator.lookup_binding(pad.args[0]))):
            return None
        padding = [int(p) + e for p, e in zip(a.padding, extra)]
        if conv:
            return relax.op.nn.conv2d(
                pad.args[0], call.args[1], strides=a.strides, padding=padding,
                dilation=a.dilation, groups=a.groups, data_layout=a.data_layout,
                kernel_layout=a.kernel_layout, out_layout=a.out_layout,
                out_dtype=None if a.out_dtype in (None, "") else a.out_dtype)
        return relax.op.nn.max_pool2d(pad.args[0], a.pool_size, a.strides, padding, a.dilation,
                                      a.ceil_mode, a.count_include_pad, a.layout, a.out_layout)

    return _rewrite_calls(mod, rewrite)


@tvm.transform.module_pass(opt_level=0, name="ClipToMinMax")
def clip_to_min_max(mod, _ctx):
    """clip(x, a, b) -> minimum(maximum(x, a), b): clip has no layout rule, min/max do."""

    def rewrite(call, mutator):
        if not is_op(call, "relax.clip"):
            return None
        x, lo, hi = call.args
        dtype = x.ty.dtype
        low = mutator.builder_.emit(relax.op.maximum(x, relax.const(lo.value, dtype)))
        return relax.op.minimum(low, relax.const(hi.value, dtype))

    return _rewrite_calls(mod, rewrite)


@tvm.transform.module_pass(opt_level=0, name="MinMaxToClip")
def min_max_to_clip(mod, _ctx):
    """Undo ClipToMinMax after layout conversion, so ReLU6 is one op again."""

    def rewrite(call, mutator):
        if not is_op(call, "relax.minimum") or scalar_value(call.args[1]) is None:
            return None
        inner = mutator.lookup_binding(call.args[0])
        if not is_op(inner, "relax.maximum") or scalar_value(inner.args[1]) is None:
            return None
        return relax.op.clip(inner.args[0], scalar_value(inner.args[1]),
                             scalar_value(call.args[1]))

    return _rewrite_calls(mod, rewrite)


def to_nchw(mod: tvm.IRModule) -> tvm.IRModule:
    """Fold zero padding into the convs and max pools, convert convolutions to NCHW/OIHW
    (pools follow), fold the weight transposes into the constants and share repeated
    transposes."""
    seq = tvm.transform.Sequential(
        [
            reshape_bias_to_rank4,
            fold_zero_padding,
            clip_to_min_max,
            relax.transform.ConvertLayout({"relax.nn.conv2d": ["NCHW", "OIHW"]}),
            relax.transform.Normalize(),
            relax.transform.FoldConstant(),
            min_max_to_clip,
            # ConvertLayout gives each NCHW consumer of an NHWC value its own transpose
            # (ResNet50: both branches after the max pool); one is enough.
            relax.transform.EliminateCommonSubexpr(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination([ENTRY]),
        ]
    )
    return seq(mod)


def lift_constants(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Turn every non-scalar constant of `main` into a function parameter.

    Returns the module (inputs first, then weights) and the weights by parameter name, so the
    TVMScript text stays small and parses back, and the weights go to a `.params` file.
    """
    func = mod[ENTRY]
    weights: dict[str, np.ndarray] = {}
    new_params: list[relax.Var] = []
    counts: dict[str, int] = {}

    @relax.expr_functor.mutator
    class Lifter(relax.PyExprMutator):
        def visit_call_(self, call):
            op_name = call.op.name.split(".")[-1] if isinstance(call.op, tvm.ir.Op) else "call"
            args = []
            for arg in call.args:
                if isinstance(arg, tvm.ir.GenericConst) and arg.ty.ndim > 0:
                    arg = self._lift(arg, op_name)
                args.append(self.visit_expr(arg))
            return relax.Call(call.op, args, call.attrs, call.ty_args)

        def _lift(self, const, op_name):
            index = counts.get(op_name, 0)
            counts[op_name] = index + 1
            name = f"{op_name}{index}_w"
            var = relax.Var(name, const.ty)
            weights[name] = const.value.numpy()
            new_params.append(var)
            return var

    body = Lifter().visit_expr(func.body)
    new_func = relax.Function(list(func.params) + new_params, body, func.ret_ty, func.is_pure, func.attrs)
    new_func = new_func.with_attr("num_input", len(func.params))
    out = tvm.IRModule({ENTRY: new_func})
    return relax.transform.Normalize()(out), weights


def keras_to_relax(model) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """The whole import: Keras -> TFLite -> Relax (NCHW) -> (module, weights)."""
    mod = tflite_to_relax(keras_to_tflite(model), model)
    return lift_constants(to_nchw(mod))


def op_counts(mod: tvm.IRModule) -> dict[str, int]:
    """How many calls of each Relax op `main` contains (for the import summary)."""
    counts: dict[str, int] = {}

    @relax.expr_functor.visitor
    class Counter(relax.PyExprVisitor):
        def visit_call_(self, call):
            super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op):
                counts[call.op.name] = counts.get(call.op.name, 0) + 1

    Counter().visit_expr(mod[ENTRY])
    return dict(sorted(counts.items()))
