"""Stage 5: compile one variant (fp32 from to_relax, int8 from quantize) for the target, with
the variant's tuning database (artifacts/tune/<variant>, empty unless tune.trials > 0).

    python -m pipeline.stages.build fp32|int8
"""
from __future__ import annotations

import sys
import time

from .. import params
from ..atomic import atomic_dir
from ..compile import export
from ..errors import TvmqError, cli_main
from ..relax_io import load_relax

SOURCES = {"fp32": "artifacts/relax", "int8": "artifacts/quantize"}


def variant_arg(stage: str, argv: list[str] | None) -> str:
    """The one command-line argument of a per-variant stage: fp32 or int8."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in SOURCES:
        raise TvmqError(f"usage: python -m pipeline.stages.{stage} {{{'|'.join(SOURCES)}}}; "
                        f"got {argv}")
    return argv[0]


@cli_main
def main(argv: list[str] | None = None) -> None:
    variant = variant_arg("build", argv)
    target_cfg = params.load()["target"]
    mod, weights = load_relax(SOURCES[variant])
    out_dir = f"artifacts/build/{variant}"
    print(f"building {variant} for {target_cfg['name']} ...", flush=True)
    start = time.perf_counter()
    with atomic_dir(out_dir) as out:
        manifest = export(out, mod, weights, target_cfg, variant, f"artifacts/tune/{variant}")
    # Printed, not written to manifest.json: the manifest stays byte-identical across runs.
    print(f"{out_dir}: {manifest['target']}, built in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
