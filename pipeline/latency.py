"""Latency and peak memory of one engine, each measured in a fresh process.

A fresh (spawned) process per engine makes `ru_maxrss` that engine's own peak, and keeps
TensorFlow's thread pools out of TVM's measurements.
"""
from __future__ import annotations

import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def summarize(seconds: np.ndarray) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"latency_ms_median": float(np.median(ms)), "latency_ms_p90": float(np.percentile(ms, 90)),
            "latency_ms_min": float(ms.min()), "throughput_ips": float(1e3 / np.median(ms)),
            "samples_ms": [round(float(v), 4) for v in ms]}


def _tvm_worker(build_dir: str, x: np.ndarray, warmup: int, repeat: int, number: int,
                threads: int) -> dict:
    from .runner import Runner, set_threads

    set_threads(threads)
    base = _peak_rss_mb()
    seconds = Runner(build_dir).time(x, warmup, repeat, number)
    return {**summarize(seconds), "peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": base}


def _keras_worker(keras_path: str, x: np.ndarray, warmup: int, repeat: int, number: int,
                  threads: int) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from .keras_io import load_keras

    base = _peak_rss_mb()
    model = load_keras(keras_path)
    fn = tf.function(model)
    tx = tf.constant(x)
    for _ in range(max(1, warmup)):
        fn(tx).numpy()
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn(tx).numpy()
        seconds.append((time.perf_counter() - start) / number)
    return {**summarize(np.array(seconds)), "peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": base}


def measure(engine: str, path: str, x: np.ndarray, warmup: int, repeat: int, number: int,
            threads: int) -> dict:
    """Time `engine` ('tvm' build folder or 'keras' model file) in a spawned process."""
    worker = {"tvm": _tvm_worker, "keras": _keras_worker}[engine]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(worker, path, x, warmup, repeat, number, threads).result()
