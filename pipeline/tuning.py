"""Optional MetaSchedule tuning of the kernels the default schedules leave generic.

`build` schedules our packed convolutions and dense layers itself (`schedules.py`); every other
fused kernel gets `ParallelVectorize` loops, and on targets without AVX512-VNNI the int8 convs
keep TVM's generic code. `tune` runs MetaSchedule on exactly those kernels (the ones
`PackedConvSchedule` does not take) and writes its JSON database into a folder that the `tune`
DVC stage tracks, so a team tunes once and pulls the records from the remote. Only records that
beat the default schedule, measured side by side, stay in the database; `build` applies them
before the default schedules (a tuned kernel gets its record, the rest the defaults).
`trials: 0` (the default) tunes nothing and writes an empty database.

Tuning runs on this machine's cores: one build worker (MetaSchedule's pool imports TVM's
tensor intrinsics once per worker, which takes tens of seconds on 2 cores) and the random cost
model (the XGBoost one would add a ~220 MB dependency).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import tvm
from tvm_ffi import structural_hash

from .compile import specialize

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
SUMMARY_FILE = "tuning.json"


def tuning_target(target: tvm.target.Target) -> tvm.target.Target:
    """`target` with the core count MetaSchedule requires (`num-cores`: this machine's)."""
    spec = dict(target.export())
    spec.setdefault("num-cores", os.cpu_count() or 1)
    return tvm.target.Target({k: v for k, v in spec.items() if k not in ("tag", "keys")})


def lowered(mod: tvm.IRModule, weights: dict[str, np.ndarray], target: tvm.target.Target):
    """The module as `build` has it right before the schedule rules: packed, legalized, fused,
    with the packed kernels already scheduled (so tuning leaves them alone)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight as dl

    from .schedules import PackedConvSchedule

    mod, weights = specialize(mod, weights, target, "default")
    with target:
        passes = (cpu_generic.library_dispatch_passes(target)
                  + cpu_generic.legalize_passes(target)
                  + [dl.ApplyDefaultSchedule(PackedConvSchedule())])
        return tvm.transform.Sequential(passes)(mod), weights


def untuned_tasks(mod: tvm.IRModule, weights: dict[str, np.ndarray], target: tvm.target.Target):
    """MetaSchedule tasks for the kernels the default schedules do not cover."""
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    fused, _ = lowered(mod, weights, target)
    def scheduled(task) -> bool:
        return any(f.attrs and f.attrs.get("tirx.is_scheduled")
                   for f in task.dispatched[0].functions.values())

    return [t for t in extract_tasks(fused, target) if not scheduled(t)]


def tune(mod: tvm.IRModule, weights: dict[str, np.ndarray], target: tvm.target.Target,
         trials: int, work_dir: Path, seed: int = 0, only_faster: bool = True) -> dict:
    """Tune up to `trials` candidates over the untuned kernels; write the database and a
    summary (`tuning.json`: trials, target, tuned kernels, records, kept kernels; no timings,
    so trials 0 gives byte-identical outputs) into `work_dir`, a fresh folder. With
    `only_faster` (the stage's setting) records that do not beat the default schedule are
    dropped. Returns the summary."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base_target = str(target)  # without this machine's core count: trials 0 is portable
    target = tuning_target(target)
    tasks = untuned_tasks(mod, weights, target) if trials > 0 else []
    if tasks:
        contexts, task_weights = extracted_tasks_to_tune_contexts(
            tasks, str(work_dir), space="post-order-apply", strategy="evolutionary",
            num_threads=1, seed=seed)
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=task_weights, work_dir=str(work_dir),
            max_trials_global=trials, num_trials_per_iter=min(64, trials),
            builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=300),
            runner=ms.runner.LocalRunner(timeout_sec=60), cost_model="random")
        kept = (keep_faster_than_default(tasks, target, work_dir) if only_faster
                else [t.task_name for t in tasks])
    else:
        kept = []
    for name in (WORKLOAD_FILE, RECORD_FILE):  # an empty database when nothing was tuned
        (work_dir / name).touch()
    records = sum(1 for line in (work_dir / RECORD_FILE).read_text().splitlines() if line)
    summary = {"trials": int(trials), "target": base_target,
               "tasks": [t.task_name for t in tasks], "records": records, "kept": kept}
    (work_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"tuned {len(tasks)} kernels in {time.perf_counter() - start:.0f} s", flush=True)
    shutil.rmtree(work_dir / "logs", ignore_errors=True)  # MetaSchedule's: not the artifact
    return summary


def summary(work_dir: Path | None) -> dict:
    """The `tuning.json` of a database folder ({"trials": 0, "records": 0} without one)."""
    path = Path(work_dir) / SUMMARY_FILE if work_dir else None
    if path is None or not path.is_file():
        return {"trials": 0, "records": 0, "tasks": [], "kept": []}
    found = json.loads(path.read_text())
    return {key: found[key] for key in ("trials", "records", "tasks", "kept")}


def seconds_per_call(mod: tvm.IRModule, target: tvm.target.Target, repeat: int = 5) -> float:
    """Best-of-`repeat` time of a one-kernel TIR module on random inputs."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    lib = tvm.compile(mod, target)
    func = next(iter(mod.functions.values()))
    rng = np.random.default_rng(0)
    args = []
    for info in ArgInfo.from_prim_func(func):
        shape, dtype = [int(d) for d in info.shape], str(info.dtype)
        value = (rng.integers(0, 100, shape) if "int" in dtype else rng.random(shape)).astype(dtype)
        args.append(tvm.runtime.tensor(value))
    name = next(iter(mod.functions.keys())).name_hint
    timer = lib.jit().time_evaluator(name, tvm.cpu(), number=10, repeat=repeat)
    return min(timer(*args).results)


def keep_faster_than_default(tasks, target: tvm.target.Target, work_dir: Path) -> list[str]:
    """Drop from the database the records of every kernel whose best record does not run
    faster than the default schedule (`ParallelVectorize`), measured side by side: a tuning
    record must never make `build` slower. Returns the kept kernels' names."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import dlight as dl
    from tvm.s_tir import meta_schedule as ms

    from .schedules import ParallelVectorize

    db = ms.database.JSONDatabase(work_dir=str(work_dir))
    kept, dropped = [], set()
    for task in tasks:
        mod = task.dispatched[0]
        key = str(structural_hash(mod))
        records = db.get_top_k(db.commit_workload(mod), 1)
        if not records:
            continue
        sch = Schedule(tvm.ir.load_json(tvm.ir.save_json(mod)))  # copies: passes may update
        records[0].trace.apply_to_schedule(sch, remove_postproc=False)  # their input in place
        with target:
            default = dl.ApplyDefaultSchedule(ParallelVectorize())(
                tvm.ir.load_json(tvm.ir.save_json(mod)))
        if seconds_per_call(sch.mod, target) < seconds_per_call(default, target):
            kept.append(task.task_name)
        else:
            dropped.add(key)
    # JSON lines: workloads "[structural hash, module]", records "[workload line, record]"
    workloads = [json.loads(line)[0] for line in
                 (work_dir / WORKLOAD_FILE).read_text().splitlines() if line]
    lines = (work_dir / RECORD_FILE).read_text().splitlines()
    (work_dir / RECORD_FILE).write_text("".join(
        line + "\n" for line in lines if line and workloads[json.loads(line)[0]] not in dropped))
    return sorted(kept)


def has_records(work_dir: Path | None) -> bool:
    path = Path(work_dir) / RECORD_FILE if work_dir else None
    return bool(path and path.is_file() and path.stat().st_size)


def apply_database(work_dir: Path):
    """A Relax pass that replaces each fused kernel the database has a record for with its
    tuned schedule (to run before the default schedule rules)."""
    from tvm import relax

    return relax.transform.MetaScheduleApplyDatabase(str(work_dir))
