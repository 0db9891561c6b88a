"""`python -m bench [--quick] [--workload NAME ...] [--out PATH] [--json PATH] [--from-json PATH]`: measure Sluice.

Runs every workload (or those named) straight against the simulated upstream, through the simplest
aiohttp pass-through and through Sluice, prints the table, and rewrites bench/RESULTS.md (or --out;
--quick writes to a temporary folder unless --update) with the figures, the command, the machine
and the date. A full run takes about 10-15 minutes on two cores; --quick about two.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
from pathlib import Path

from . import archive
from .document import render_markdown
from .machine import describe
from .processes import ROOT, StartupError, Upstream, raise_fd_limit
from .report import render_text
from .runner import WorkloadResult, run_workload, say
from .workloads import WORKLOAD_NAMES, workloads

DEFAULT_OUT = ROOT / "bench" / "RESULTS.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see `python -m bench --help`."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds per workload and fewer streams: a smoke test"
    )
    parser.add_argument(
        "--workload",
        action="append",
        choices=WORKLOAD_NAMES,
        metavar="NAME",
        help=f"run only this workload; repeat for more (one of: {', '.join(WORKLOAD_NAMES)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the Markdown report (default: bench/RESULTS.md; with --quick, a temporary folder)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --quick, rewrite bench/RESULTS.md all the same (a full run always does)",
    )
    parser.add_argument(
        "--upstream",
        type=Upstream,
        choices=list(Upstream),
        default=Upstream.BENCH,
        help="the simulated upstream: bench/upstream (default, cheap per chunk) or server/simulator",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write every run's raw results as JSON here"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="run nothing: print and write the report again from a file an earlier --json wrote",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        quick = args.quick or (args.from_json is not None and "--quick" in args.from_json.read_text()[:2000])
        if quick and not args.update:
            args.out = Path(tempfile.mkdtemp(prefix="sluice-bench-report-")) / "RESULTS.md"
        else:
            args.out = DEFAULT_OUT
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected workloads (or reload earlier results), print the table, write the report."""
    args = parse_args(argv)
    if args.from_json is not None:
        publish(*archive.load(args.from_json), out=args.out)
        return 0
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    machine = describe()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        results = measure(args)
    except StartupError as exc:
        say(f"benchmark failed: {exc}")
        return 1
    if args.json is not None:
        archive.save(args.json, results, command, date, machine)
        say(f"wrote {args.json}")
    publish(results, command, date, machine, out=args.out)
    return 0


def measure(args: argparse.Namespace) -> list[WorkloadResult]:
    """Run the selected workloads, one after another."""
    raise_fd_limit()
    log_dir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    say(f"logs of every process: {log_dir}")
    selected = [w for w in workloads(args.quick) if args.workload is None or w.name in args.workload]
    return [run_workload(workload, log_dir, args.upstream) for workload in selected]


def publish(results: list[WorkloadResult], command: str, date: str, machine: dict[str, str], *, out: Path) -> None:
    """Print the table and write the Markdown report."""
    print(render_text(results))
    out.write_text(render_markdown(results, machine, command, date))
    say(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
