"""Quantization options (modelled on Relay's `qconfig`) and their validation."""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from ..errors import TvmqError

CALIBRATE_MODES = ("global_scale", "max", "percentile", "kl_divergence", "mse")
WEIGHT_SCALES = ("max", "power2")
ROUNDINGS = ("upward", "tonearest")
REQUANTIZES = ("float32", "fixed_point")


@dataclass(frozen=True)
class QConfig:
    """How to quantize. Defaults reproduce a calibrated (max) per-channel int8 model.

    calibrate_mode: global_scale (one fixed activation range [-global_scale, global_scale],
        power-of-two scales, requantize by shifts: Relay's historical default) | max |
        percentile | kl_divergence (TensorRT entropy) | mse.
    nbit_input / nbit_weight: bits of activations (stored as uint8) and weights (int8).
    weight_scale: max (scale = max|w| / qmax) | power2 (scale rounded up to a power of two).
    per_channel: one weight scale per output channel (else one per tensor).
    skip_conv_layers: indices of conv2d layers (in program order) kept in float32.
    skip_dense_layer: keep the final dense/matmul layers in float32.
    requantize: how an int32 accumulator becomes the next uint8 activation. float32: times a
        float32 multiplier per channel, rounded half to even (ONNX Runtime and oneDNN
        requantize with float scales too; on CPUs without a 64-bit vector multiply it is the
        cheaper epilogue) | fixed_point: int32 multiplier and shift in int64 (TFLite, Relay),
        rounded per `rounding`. global_scale's power-of-two multipliers are pure shifts either way.
    rounding: of the integer shifts (fixed_point requantize and residual adds, global_scale's
        shifts): upward (add half, then shift) | tonearest (half away from zero).
    bias_correction: subtract the mean output error that weight rounding causes (from the
        calibration inputs' per-channel means) from each layer's bias.
    accuracy_budget: max drop of top-1 agreement with fp32 on the calibration set (e.g. 0.01);
        layers are put back to float32, most sensitive first, until it holds. None = off.
    """

    calibrate_mode: str = "max"
    global_scale: float = 8.0
    percentile: float = 99.99
    nbit_input: int = 8
    nbit_weight: int = 8
    weight_scale: str = "max"
    per_channel: bool = True
    skip_conv_layers: tuple[int, ...] = (0,)
    skip_dense_layer: bool = False
    requantize: str = "float32"
    rounding: str = "upward"
    bias_correction: bool = True
    accuracy_budget: float | None = None
    max_float_layers: int = 8

    def __post_init__(self):
        def bad(name, value, allowed):
            raise TvmqError(f"quantize.{name}={value!r} is invalid: use {allowed}.")

        if self.calibrate_mode not in CALIBRATE_MODES:
            bad("calibrate_mode", self.calibrate_mode, " | ".join(CALIBRATE_MODES))
        if self.weight_scale not in WEIGHT_SCALES:
            bad("weight_scale", self.weight_scale, " | ".join(WEIGHT_SCALES))
        if self.requantize not in REQUANTIZES:
            bad("requantize", self.requantize, " | ".join(REQUANTIZES))
        if self.rounding not in ROUNDINGS:
            bad("rounding", self.rounding, " | ".join(ROUNDINGS))
        for name in ("nbit_input", "nbit_weight"):
            if not isinstance(getattr(self, name), int) or not 2 <= getattr(self, name) <= 8:
                bad(name, getattr(self, name), "an integer from 2 to 8")
        if not self.global_scale > 0:
            bad("global_scale", self.global_scale, "a positive number, e.g. 8.0")
        if not 50.0 < self.percentile <= 100.0:
            bad("percentile", self.percentile, "a number in (50, 100], e.g. 99.99")
        if self.accuracy_budget is not None and not 0.0 <= self.accuracy_budget < 1.0:
            bad("accuracy_budget", self.accuracy_budget, "null or a fraction in [0, 1), e.g. 0.01")
        if any(not isinstance(i, int) or i < 0 for i in self.skip_conv_layers):
            bad("skip_conv_layers", list(self.skip_conv_layers), "a list of conv indices >= 0")

    @classmethod
    def from_params(cls, section: dict) -> "QConfig":
        """Build from the `quantize` section of params.yaml; unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise TvmqError(f"unknown quantize option(s) {unknown} in params.yaml; "
                            f"known: {sorted(known)}.")
        values = dict(section)
        if values.get("skip_conv_layers") is not None:
            values["skip_conv_layers"] = tuple(values["skip_conv_layers"])
        else:
            values["skip_conv_layers"] = ()
        return cls(**values)


_CURRENT: list[QConfig] = [QConfig()]


def current_qconfig() -> QConfig:
    return _CURRENT[-1]


@contextlib.contextmanager
def qconfig(**options):
    """`with qconfig(global_scale=8.0): quantize(...)`, as with Relay's `relay.quantize.qconfig`."""
    if "calibrate_mode" not in options and "global_scale" in options:
        options["calibrate_mode"] = "global_scale"
        options.setdefault("weight_scale", "power2")
    try:
        cfg = dataclasses.replace(current_qconfig(), **options)
    except TypeError as err:
        raise TvmqError(f"invalid qconfig option: {err}") from None
    _CURRENT.append(cfg)
    try:
        yield cfg
    finally:
        _CURRENT.pop()
