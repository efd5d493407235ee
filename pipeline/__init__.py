"""tvmq: Keras -> TVM Relax -> int8 pipeline."""
