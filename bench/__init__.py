"""Sluice's benchmark: every figure beside the same workload sent straight to the upstream.

`python -m bench` (see bench/__main__.py) starts the simulated upstream and the gateway as their
own processes, drives them from a load generator in a third (bench/loadgen.py), samples the CPU
and memory of each, and writes bench/RESULTS.md.
"""
