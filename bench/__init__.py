"""TuneLab's benchmarks: `python bench/run.py` (or `make bench`) runs every family in one process."""
