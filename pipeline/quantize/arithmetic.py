"""Integer arithmetic of the int8 graph, as numpy: parameter derivation and bit-exact references.

The Relax rules emit exactly these operations; the unit tests compare the two bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Q31 = 31


@dataclass(frozen=True)
class QParams:
    """An activation's quantization: real = scale * (q - zero_point), q in [qmin, qmax] (uint8)."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        q = np.round(np.asarray(x, np.float64) / self.scale) + self.zero_point
        return np.clip(q, self.qmin, self.qmax).astype(np.uint8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((q.astype(np.int32) - self.zero_point) * np.float32(self.scale)).astype(np.float32)

    def clamp_range(self, lo: float | None, hi: float | None) -> tuple[int, int]:
        """Integer bounds of `clip(x, lo, hi)` (ReLU/ReLU6) on this grid, within [qmin, qmax]."""
        qlo = self.qmin if lo is None else max(self.qmin, int(np.round(lo / self.scale)) + self.zero_point)
        qhi = self.qmax if hi is None else min(self.qmax, int(np.round(hi / self.scale)) + self.zero_point)
        return qlo, max(qlo, qhi)


def activation_qparams(lo: float, hi: float, nbit: int, power2_scale: float | None = None) -> QParams:
    """uint8 params for a calibrated range [lo, hi].

    Non-negative tensors (after ReLU) use zero point 0 and the full [0, 2^nbit - 1]. Signed ones
    are asymmetric with a zero point (folded into the next layer's bias). `power2_scale` fixes
    the scale (global_scale mode): symmetric int grid [-(2^(nbit-1)-1), 2^(nbit-1)-1].
    """
    qmax = 2 ** nbit - 1
    if power2_scale is not None:
        half = 2 ** (nbit - 1)
        if lo >= 0:
            return QParams(power2_scale, 0, 0, half - 1)
        return QParams(power2_scale, half, 1, 2 * half - 1)
    hi = max(hi, 1e-8)
    if lo >= 0:
        return QParams(hi / qmax, 0, 0, qmax)
    lo = min(lo, 0.0)
    scale = (hi - lo) / qmax
    zero_point = int(np.clip(np.round(-lo / scale), 0, qmax))
    return QParams(scale, zero_point, 0, qmax)


def weight_scales(w: np.ndarray, axis: int | None, nbit: int, power2: bool) -> np.ndarray:
    """Symmetric weight scales, one per slice along `axis` (or one for the tensor)."""
    qmax = 2 ** (nbit - 1) - 1
    reduce = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    amax = np.maximum(np.abs(w).max(axis=reduce), 1e-12).astype(np.float64)
    if power2:
        return np.power(2.0, np.ceil(np.log2(amax))) / 2 ** (nbit - 1)
    return amax / qmax


def quantize_weight(w: np.ndarray, scales: np.ndarray, axis: int | None, nbit: int) -> np.ndarray:
    qmax = 2 ** (nbit - 1) - 1
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    return np.clip(np.round(w / scales.reshape(shape)), -qmax, qmax).astype(np.int8)


def fixed_point_multiplier(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write each positive real multiplier as m0 * 2^-shift with m0 a Q31 int in [2^30, 2^31).

    Requantize then computes (acc * m0 + 2^(shift-1)) >> shift in int64.
    """
    m = np.asarray(m, np.float64)
    if not np.all((m > 0) & (m < 2.0 ** 30)):  # written so that NaN is rejected too
        raise ValueError(f"requantize multiplier out of range: {m.min()}..{m.max()}")
    mantissa, exponent = np.frexp(m)  # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = np.round(mantissa * (1 << Q31)).astype(np.int64)
    carry = m0 == (1 << Q31)  # mantissa rounded up to 1.0
    m0 = np.where(carry, m0 // 2, m0)
    exponent = exponent + carry
    shift = (Q31 - exponent).astype(np.int64)
    return m0, shift


def layer_multipliers(m: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-channel int32 multipliers sharing one shift: m[c] ~= m0[c] * 2^-shift.

    The shift is chosen so the largest multiplier uses the full 31 bits (m0 < 2^31); smaller
    channels keep >= 20 bits unless their multiplier is 2^11 times smaller than the largest.
    One shift per layer keeps the graph and the params small (int32, 4 bytes per channel).
    """
    m = np.asarray(m, np.float64).reshape(-1)
    _, shift = fixed_point_multiplier(np.array([m.max()]))
    m0 = np.round(m * 2.0 ** int(shift[0])).astype(np.int64)
    return np.minimum(m0, (1 << Q31) - 1).astype(np.int32), int(shift[0])


def float_multipliers(m: np.ndarray) -> np.ndarray:
    """Per-channel float32 requantize multipliers (positive and finite after the cast)."""
    m32 = np.asarray(m, np.float64).astype(np.float32)
    if not np.all(np.isfinite(m32) & (m32 > 0)):  # written so that NaN is rejected too
        raise ValueError(f"requantize multiplier out of float32 range: {m.min()}..{m.max()}")
    return m32


def requantize_float(acc: np.ndarray, m32: np.ndarray, zero_point: int, qlo: int,
                     qhi: int) -> np.ndarray:
    """int32 accumulator -> uint8 the way `requantize: float32` does it, every step in float32:
    rint(float32(acc) * m32) + zero_point (halves to even, the IEEE default), clamped.

    One multiply, then rounding, then an add of an integer: no step can be fused into an FMA
    (which would round differently), so the compiled epilogue matches this bit for bit.
    """
    product = acc.astype(np.float32) * np.asarray(m32, np.float32)
    out = np.rint(product) + np.float32(zero_point)
    return np.clip(out, qlo, qhi).astype(np.uint8)


ADD_MANTISSA_BITS = 15  # float32 residual-add multipliers: see add_multiplier


def add_multiplier(m: float) -> np.float32:
    """A residual add's rescale s_in / s_out as float32 with 15 significant bits: times an
    uint8 minus its zero point (|v| <= 255, 8 bits) the product has <= 23 bits, exact in float32,
    so an FMA the compiler may form from multiply + add rounds exactly like the two steps."""
    mantissa, exponent = np.frexp(np.float64(m))
    bits = ADD_MANTISSA_BITS
    return np.float32(np.ldexp(np.round(mantissa * 2 ** bits), int(exponent) - bits))


def add_float(terms, zero_point: int, qlo: int, qhi: int) -> np.ndarray:
    """Residual add with `requantize: float32`: rint(sum of (q - zp) * add_multiplier) + zp,
    clamped; `terms` = [(uint8 q, its zero point, float32 multiplier), ...]."""
    total = None
    for q, zp, m in terms:
        product = (q.astype(np.float32) - np.float32(zp)) * np.float32(m)
        total = product if total is None else total + product
    return np.clip(np.rint(total) + np.float32(zero_point), qlo, qhi).astype(np.uint8)


def is_power_of_two(m: np.ndarray) -> bool:
    mantissa, _ = np.frexp(np.asarray(m, np.float64))
    return bool(np.all(mantissa == 0.5))


def shift_right_rounded(v: np.ndarray, shift: np.ndarray, rounding: str) -> np.ndarray:
    """v / 2^shift rounded: 'upward' adds half then floors; 'tonearest' rounds half away from 0.

    A shift <= 0 multiplies by 2^-shift exactly.
    """
    v = v.astype(np.int64)
    shift = np.asarray(shift, np.int64)
    pos = np.maximum(shift, 0)
    half = np.where(pos > 0, np.left_shift(np.int64(1), np.maximum(pos - 1, 0)), 0)
    if rounding == "upward":
        out = np.right_shift(v + half, pos)
    else:
        out = np.sign(v) * np.right_shift(np.abs(v) + half, pos)
    return np.left_shift(out, np.maximum(-shift, 0))


def requantize(acc: np.ndarray, m0: np.ndarray | None, shift: int, zero_point: int,
               qlo: int, qhi: int, rounding: str) -> np.ndarray:
    """int32 accumulator -> uint8: round(acc * m0 * 2^-shift) + zero_point, clamped.

    m0 (int32, broadcast per channel) = None is the shift-only form used when the multiplier is
    a power of two.
    """
    v = acc.astype(np.int64) if m0 is None else acc.astype(np.int64) * np.asarray(m0, np.int64)
    out = shift_right_rounded(v, np.int64(shift), rounding) + zero_point
    return np.clip(out, qlo, qhi).astype(np.uint8)
