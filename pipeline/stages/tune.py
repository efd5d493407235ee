"""Stage 4: MetaSchedule tuning database for one variant (empty when `tune.trials` is 0).

    python -m pipeline.stages.tune fp32|int8
"""
from __future__ import annotations

from .. import params
from ..atomic import atomic_dir
from ..compile import make_target
from ..errors import TvmqError, cli_main
from ..relax_io import load_relax
from ..tuning import tune
from .build import SOURCES, variant_arg


@cli_main
def main(argv: list[str] | None = None) -> None:
    variant = variant_arg("tune", argv)
    p = params.load()
    target_cfg, trials = p["target"], p["tune"]["trials"]
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 0:
        raise TvmqError(f"tune.trials={trials!r} is invalid: use a whole number >= 0 "
                        "(0 = default schedules only), e.g. `dvc exp run -S tune.trials=500`.")
    target = make_target(target_cfg)
    schedules = target_cfg.get("schedules", "default")
    if trials and (target.kind.name != "llvm" or schedules != "default"):
        raise TvmqError(f"tune.trials={trials} needs an llvm target with schedules: default "
                        f"(target '{target_cfg['name']}' has kind {target.kind.name}, schedules "
                        f"{schedules}); set tune.trials=0.")
    mod, weights = load_relax(SOURCES[variant])
    out_dir = f"artifacts/tune/{variant}"
    print(f"tuning {variant} for {target_cfg['name']}: {trials} trials ...", flush=True)
    with atomic_dir(out_dir) as out:
        summary = tune(mod, weights, target, trials, out)
    print(f"{out_dir}: {summary['records']} records for {len(summary['tasks'])} kernels")


if __name__ == "__main__":
    main()
