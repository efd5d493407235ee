"""DVC stage entry points: `python -m pipeline.stages.<stage>`; thin wrappers over the library."""
