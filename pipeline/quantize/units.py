"""Find the layers the quantizer rewrites: conv2d/matmul + bias add + ReLU/ReLU6 chains.

A unit is the chain `conv2d|matmul -> add(weight) -> clip|relu` in the fp32 Relax graph (each
link used once), i.e. one Keras Conv2D/DepthwiseConv2D/Dense layer with its folded BatchNorm and
activation. It becomes one int8 op with int32 accumulation and a requantize epilogue.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax

CONV = "relax.nn.conv2d"
MATMUL = "relax.matmul"


@dataclass
class Unit:
    name: str  # e.g. conv2d5 / matmul0 (from the weight parameter name)
    kind: str  # "conv2d" | "dense"
    index: int  # position among units of the same kind (skip_conv_layers counts convs)
    call: relax.Call
    data: relax.Var
    weight: relax.Var
    bias: relax.Var | None
    activation: tuple[float | None, float | None] | None  # (lo, hi) of ReLU/ReLU6
    out: relax.Var
    members: list[relax.Var] = field(default_factory=list)  # chain vars, first to last


def op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def prim_float(expr) -> float:
    """The number in a PrimValue / FloatImm / scalar constant argument."""
    while hasattr(expr, "value") and not isinstance(expr, (int, float)):
        if isinstance(expr, tvm.ir.GenericConst):
            return float(expr.value.numpy())
        expr = expr.value
    return float(expr)


def use_counts(bindings) -> dict:
    counts: dict = {}

    @relax.expr_functor.visitor
    class Counter(relax.PyExprVisitor):
        def visit_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

        def visit_dataflow_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

    visitor = Counter()
    for b in bindings:
        visitor.visit_expr(b.value)
    return counts


def find_units(func: relax.Function, weight_params: set) -> list[Unit]:
    bindings = list(func.body.blocks[0].bindings)
    uses = use_counts(bindings)
    uses[func.body.body] = uses.get(func.body.body, 0) + 1
    by_arg: dict = {}
    for b in bindings:
        if isinstance(b.value, relax.Call):
            for arg in b.value.args:
                by_arg.setdefault(arg, []).append(b)

    def only_consumer(var):
        consumers = by_arg.get(var, [])
        return consumers[0] if uses.get(var, 0) == 1 and len(consumers) == 1 else None

    units, counters = [], {"conv2d": 0, "dense": 0}
    for b in bindings:
        op = op_name(b.value)
        if op not in (CONV, MATMUL) or b.value.args[1] not in weight_params:
            continue
        kind = "conv2d" if op == CONV else "dense"
        call = b.value
        members, out, bias, act = [b.var], b.var, None, None
        nxt = only_consumer(out)
        if nxt is not None and op_name(nxt.value) == "relax.add":
            other = [a for a in nxt.value.args if not a.same_as(out)]
            if len(other) == 1 and other[0] in weight_params:
                bias, out = other[0], nxt.var
                members.append(out)
                nxt = only_consumer(out)
        if nxt is not None and op_name(nxt.value) in ("relax.clip", "relax.nn.relu"):
            if op_name(nxt.value) == "relax.clip":
                act = (prim_float(nxt.value.args[1]), prim_float(nxt.value.args[2]))
            else:
                act = (0.0, None)
            out = nxt.var
            members.append(out)
        name = call.args[1].name.removesuffix("_w")
        units.append(Unit(name, kind, counters[kind], call, call.args[0], call.args[1], bias, act,
                          out, members))
        counters[kind] += 1
    return units
