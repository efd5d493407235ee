"""Post-training int8 quantization of Relax modules (TVM 0.27 ships none).

    with qconfig(global_scale=8.0):
        qmod, qparams = quantize(mod, params, calibration=images)

`quantize_with_report` also returns the per-layer report the `quantize` stage writes.
"""
from __future__ import annotations

from .config import QConfig, current_qconfig, qconfig
from .pass_ import quantize, quantize_with_report

__all__ = ["QConfig", "qconfig", "current_qconfig", "quantize", "quantize_with_report"]
