"""The benchmark's modules (run_bench.py is the command): nights, runs, memory, targets, the report."""
