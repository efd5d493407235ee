"""Requantize epilogues that round and convert in one instruction (build time, LLVM targets).

The quantizer writes an int8 layer's output as `uint8(clip(round_half_even(x) + zp, lo, hi))`
in float32 (`quantize.realize`), which LLVM compiles to a rounding instruction (`vrndscaleps`),
the zero point, the clamp and a truncating conversion (`vcvttps2dq`). `llvm.lrint` rounds half
to even (the default rounding mode) and converts in one instruction (`vcvtps2dq` on x86):
clamped first to lo - zp, an integer, which rounding cannot cross, the zero point added after
in int32 and the upper clamp an unsigned minimum (for hi = 255 the saturating narrowing store
itself, `vpmovusdb`), it gives the same bytes with an instruction fewer per vector in the
epilogue of every int8 layer, two where hi = 255 (most: a ReLU6 output's range). A residual
add dequantizes a conv's output at once,
`float32(uint8(clip(round(x) + zp, lo, hi))) - zp`: that is `clip(round(x), lo - zp, hi - zp)`
(small integers, exact in float32), without the cast and the two zero-point additions. The
quantized module itself keeps the portable form.
"""
from __future__ import annotations

import tvm
from tvm import relax, te, tirx

from .quantize.realize import ROUND_FUNC
from .relax_import import is_op, scalar_value
from .relax_io import ENTRY


def round_to_uint8_te(x: te.Tensor, zero_point: int, lo: int, hi: int) -> te.Tensor:
    """uint8(clip(round_half_even(x) + zero_point, lo, hi)), rounding and converting at once.

    Only the lower bound is clamped in float32; the upper one is an unsigned minimum of the
    int32 result, which LLVM folds into the narrowing store when hi is 255 (`vpmovusdb`: one
    instruction fewer per vector). Exact: the float clamp keeps the result >= lo >= 0, and
    past int32 `lrint` gives 0x80000000 (plus the zero point, or a sum that wraps past 2^31),
    which the unsigned minimum turns into hi, as clip does."""
    low = float(lo - zero_point)

    def value(*i):
        clamped = tirx.max(x(*i), tirx.const(low, "float32"))
        rounded = tirx.call_llvm_pure_intrin("int32", "llvm.lrint.i32.f32", clamped)
        shifted = tirx.reinterpret("uint32", rounded + zero_point)
        return tirx.min(shifted, tirx.const(hi, "uint32")).astype("uint8")

    return te.compute(x.shape, value, name="round_to_uint8")


def _integer(value) -> int | None:
    number = float(value)
    return int(number) if number.is_integer() else None


def _dequantized_at_once(func: relax.Function) -> set:
    """Clip results whose uint8 cast is only cast back to float32 (a residual add dequantizing
    a conv's output in the same epilogue): there the float rounding is shorter (LLVM keeps the
    value in float), so those stay as they are."""
    casts, users = {}, {}
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call):
                continue
            if (is_op(value, "relax.astype") and str(value.attrs.dtype) == "uint8"
                    and isinstance(value.args[0], relax.Var)):
                casts[binding.var] = value.args[0]
            for arg in value.args:
                for var in (arg.fields if isinstance(arg, relax.Tuple) else [arg]):
                    users.setdefault(var, []).append(value)
    return {clip for cast, clip in casts.items() if users.get(cast) and all(
        is_op(u, "relax.astype") and str(u.attrs.dtype) == "float32" for u in users[cast])}


@relax.expr_functor.mutator
class _Fuser(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.fused = 0
        self.keep = _dequantized_at_once(mod[ENTRY])

    def _rounded(self, clip_var):
        """(rounded var, zero point, lo, hi) of `clip_var` = clip(round_half_even(x) [+ zp],
        lo, hi) with a uint8 clamp, or None."""
        clip = self.lookup_binding(clip_var)
        if not is_op(clip, "relax.clip"):
            return None
        lo, hi = (_integer(bound.value) for bound in clip.args[1:])
        if lo is None or hi is None or not 0 <= lo <= hi <= 255:
            return None
        rounded, zero_point = clip.args[0], 0
        inner = self.lookup_binding(rounded)
        if is_op(inner, "relax.add") and scalar_value(inner.args[1]) is not None:
            zero_point = _integer(scalar_value(inner.args[1]))
            rounded = inner.args[0]
            inner = self.lookup_binding(rounded)
        if (zero_point is None or not is_op(inner, "relax.call_tir")
                or not inner.args[0].name_hint.startswith(ROUND_FUNC)
                or str(inner.args[1].fields[0].ty.dtype) != "float32"):
            return None
        return rounded, zero_point, lo, hi

    def _to_uint8(self, call):
        """uint8(clip(round_half_even(x) + zp, lo, hi)) -> `round_to_uint8_te` (x, ...)."""
        if (not is_op(call, "relax.astype") or str(call.attrs.dtype) != "uint8"
                or call.args[0] in self.keep):
            return None
        matched = self._rounded(call.args[0])
        if matched is None:
            return None
        rounded, zero_point, lo, hi = matched
        x = self.lookup_binding(rounded).args[1].fields[0]
        return self.builder_.call_te(round_to_uint8_te, x, zero_point=zero_point, lo=lo, hi=hi,
                                     primfunc_name_hint="round_to_uint8")

    def _centred(self, call):
        """float32(uint8(clip(r + zp, lo, hi))) - zp, r = round_half_even(x): a residual add's
        operand, centred on its zero point -> clip(r, lo - zp, hi - zp), the same floats (small
        integers) without the zero point's two additions and the cast's truncation."""
        if not is_op(call, "relax.subtract") or scalar_value(call.args[1]) is None:
            return None
        to_float = self.lookup_binding(call.args[0])
        if not is_op(to_float, "relax.astype") or str(to_float.attrs.dtype) != "float32":
            return None
        to_uint8 = self.lookup_binding(to_float.args[0])
        if not is_op(to_uint8, "relax.astype") or str(to_uint8.attrs.dtype) != "uint8":
            return None
        matched = self._rounded(to_uint8.args[0])
        if matched is None or float(matched[1]) != scalar_value(call.args[1]):
            return None
        rounded, zero_point, lo, hi = matched
        return relax.op.clip(rounded, lo - zero_point, hi - zero_point)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        new = self._to_uint8(call)
        if new is None:
            new = self._centred(call)
        if new is None:
            return call
        self.fused += 1
        return new


def fuse_requantize(mod: tvm.IRModule) -> tvm.IRModule:
    """Every `uint8(clip(round_half_even(x) + zp, lo, hi))` of `main` as `round_to_uint8_te`,
    every such value dequantized at once as the clamped rounding itself (same numbers); the
    ops left unused are dropped."""
    fuser = _Fuser(mod)
    func = fuser.visit_expr(mod[ENTRY])
    if not fuser.fused:
        return mod
    fuser.builder_.update_func(fuser.builder_.get().get_global_var(ENTRY), func)
    return relax.transform.DeadCodeElimination([ENTRY])(fuser.builder_.get())
