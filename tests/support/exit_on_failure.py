"""A pytest plugin for the mutation check: the first failure ends the run at once, with no teardown.

The check only needs to know that a test failed. Tearing down what a break left running (a drain
waiting on a stream that was never stopped, a supervisor restarting a worker) costs seconds per
break; tests/mutations.py kills the run's whole process group instead, so nothing it started
outlives it.
"""

from __future__ import annotations

import os
import sys

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """End the process on the first failed phase (setup, call or teardown) of any test."""
    if report.failed:
        sys.stdout.write(f"\nFAILED {report.nodeid} ({report.when}); exiting without teardown\n")
        sys.stdout.flush()
        os._exit(1)
