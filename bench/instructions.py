"""Count what one 1-token stream costs a proxy: user-space instructions (callgrind) or Python calls (cProfile).

    python -m bench.instructions                        # Sluice, /v1/chat/completions, 300 streams
    python -m bench.instructions --route native         # Sluice's /chat/stream
    python -m bench.instructions --target passthrough   # bench/passthrough.py, the floor
    python -m bench.instructions --root /work/main      # another checkout's gateway (an A/B)
    python -m bench.instructions --annotate 40          # also the 40 costliest functions, inclusive
    python -m bench.instructions --profile              # cProfile instead: Python calls per stream
    python -m bench.instructions --tokens 21 --gap-ms 10 --streams 60   # paced streams: per event

One process under test (the gateway, `python run.py --config config/test.toml` at warning level
as `python -m bench` runs it, or the pass-through) serves one client that sends `--warmup`
one-token streams, then `--streams` more, all on one keep-alive connection, back to back, against
`python -m bench.upstream`. Only the measured streams are counted: the process runs under
valgrind's callgrind with instrumentation off until the warm-up is done (`callgrind_control -i on`),
and the dump taken after the last stream divides by their number. It also prints the socket reads
per stream (see `_calls`). Identical code varies by a few
thousand instructions per stream between processes with random hash seeds, so the process runs
with PYTHONHASHSEED=0 (`--hash-seed`); an A/B still deserves a second seed. Wall-clock CPU on a
shared machine varies far more. Run it under the machine lock.

With `--profile` the process runs at full speed under cProfile, switched on and off by SIGUSR1
and SIGUSR2 around the measured streams, and the report is its functions by cumulative time
with their calls per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import Api, Pace
from .drivers import request_body
from .processes import ROOT, Service, Upstream, child_env, start_upstream
from .reading import MARKERS
from .wire import Connection, connect, request_head

ROUTES = {"v1": ("/v1/chat/completions", Api.OPENAI), "native": ("/chat/stream", Api.NATIVE)}
STARTUP_S = 600.0  # valgrind makes Python's imports some 50 times slower
TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figure per stream."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=("sluice", "passthrough"), default="sluice")
    parser.add_argument(
        "--route", choices=tuple(ROUTES), default="v1", help="Sluice's route (the pass-through has /v1)"
    )
    parser.add_argument("--streams", type=int, default=300, help="measured streams (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="streams before measuring (default 30)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose gateway runs (default: this one)")
    parser.add_argument("--annotate", type=int, default=0, metavar="N", help="print the N costliest functions")
    parser.add_argument("--profile", action="store_true", help="cProfile (Python calls) instead of callgrind")
    parser.add_argument(
        "--tokens",
        type=int,
        default=1,
        help="above 1: after the 1-token streams, as many paced streams of this many tokens, and per event",
    )
    parser.add_argument(
        "--gap-ms", type=float, default=10.0, help="the upstream's pace between tokens when --tokens > 1 (default 10)"
    )
    parser.add_argument("--hash-seed", type=int, default=0, help="PYTHONHASHSEED of the process (default 0)")
    parser.add_argument("--out", type=Path, help="keep the dump and logs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.target == "passthrough" and args.route != "v1":
        parser.error("the pass-through serves /v1 only")
    if args.tokens < 1:
        parser.error("--tokens is at least 1")
    out = args.out or Path(tempfile.mkdtemp(prefix="sluice-instructions-"))
    out.mkdir(parents=True, exist_ok=True)
    upstream = start_upstream(Upstream.BENCH, out, "upstream")
    try:
        if args.profile:
            print(_profile(args, upstream, out))
        else:
            print(_callgrind(args, upstream, out))
    finally:
        upstream.stop()
    return 0


def _command(args: argparse.Namespace, upstream: Service, port: int) -> tuple[list[str], dict[str, str], Path]:
    """The target's command line, environment and working directory."""
    # A fixed hash seed: with a random one, identical code varies by some thousands of
    # instructions per stream between processes (dict and set layouts).
    seed = {"PYTHONHASHSEED": str(args.hash_seed)}
    if args.target == "passthrough":
        argv = ["-m", "bench.passthrough", "--upstream", upstream.url, "--port", str(port)]
        return argv, child_env(seed), ROOT
    env = child_env(
        {
            **seed,
            "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-bench-not-a-secret",
            "AI_INTEGRATIONS_OPENAI_BASE_URL": upstream.url + "/v1",
            "SLUICE_LOGGING_LEVEL": "warning",
        }
    )
    root = args.root.resolve()
    argv = [
        str(root / "run.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--config",
        str(root / "config/test.toml"),
    ]
    return argv, env, root


def _callgrind(args: argparse.Namespace, upstream: Service, out: Path) -> str:
    port = _free_port()
    argv, env, cwd = _command(args, upstream, port)
    dump = out / "callgrind.out"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dump}"]
    log = out / "target.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([*valgrind, sys.executable, *argv], cwd=cwd, env=env, stdout=sink, stderr=sink)
    try:
        _wait_listening(process, port, log)
        asyncio.run(_streams(args, port, args.warmup))
        _control(process.pid, "--instr=on")
        asyncio.run(_streams(args, port, args.streams))
        _control(process.pid, "--instr=off")
        _control(process.pid, "--dump")
        if args.tokens > 1:
            _control(process.pid, "--instr=on")
            asyncio.run(_streams(args, port, args.streams, args.tokens))
            _control(process.pid, "--instr=off")
            _control(process.pid, "--dump")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
    dumps = sorted(out.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
    measured, *more = [p for p in dumps if _total(p) > 0]  # the explicit dumps, before the one at exit
    paced = more[0] if args.tokens > 1 else None
    total = _total(measured)
    reads = _calls(measured, "uv__read") / args.streams
    lines = [
        f"{_label(args)}: {total / args.streams / 1e6:.3f} M instructions per stream, {reads:.2f} socket reads"
        f" ({measured})"
    ]
    if paced is not None:
        # Per event beyond a stream's first: setup cancels out against the 1-token streams, measured
        # in the same process just before. Each paced event must arrive in a read of its own.
        paced_total = _total(paced) / args.streams
        paced_reads = _calls(paced, "uv__read") / args.streams
        per_event = (paced_total - total / args.streams) / (args.tokens - 1)
        lines.append(
            f"  then {args.tokens}-token streams, one token every {args.gap_ms:g} ms: {paced_total / 1e6:.3f} M"
            f" per stream at {paced_reads:.2f} socket reads; {per_event / 1e3:.1f} k instructions per event"
            f" beyond the first ({paced})"
        )
    if args.annotate:
        annotated = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(measured)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [row for row in annotated.splitlines() if re.match(r"^\s*[\d,]+ \(", row)][: args.annotate]
        lines += [_per_stream(row, args.streams) for row in rows]
    return "\n".join(lines)


def _profile(args: argparse.Namespace, upstream: Service, out: Path) -> str:
    port = _free_port()
    argv, env, cwd = _command(args, upstream, port)
    stats = out / "profile.pstats"
    log = out / "target.log"
    wrapper = [sys.executable, "-m", "bench.instructions_serve", str(stats), *argv]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(cwd)])
    with log.open("wb") as sink:
        process = subprocess.Popen(wrapper, cwd=cwd, env=env, stdout=sink, stderr=sink)
    try:
        _wait_listening(process, port, log)
        asyncio.run(_streams(args, port, args.warmup))
        process.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        asyncio.run(_streams(args, port, args.streams, args.tokens))
        process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    import pstats

    data = pstats.Stats(str(stats))
    calls = sum(n for (_, n, _, _, _) in data.stats.values())  # type: ignore[attr-defined]
    rows = sorted(data.stats.items(), key=lambda kv: kv[1][3], reverse=True)  # type: ignore[attr-defined]
    shape = f", {args.tokens} tokens one every {args.gap_ms:g} ms" if args.tokens > 1 else ""
    lines = [f"{_label(args)}: {calls / args.streams:.0f} Python calls per stream{shape} ({stats})"]
    for (file, line, name), (_, ncalls, _, cumulative, _) in rows[: args.annotate or 40]:
        where = f"{Path(file).name}:{line}({name})"
        lines.append(f"{cumulative / args.streams * 1e6:8.1f} µs cum  {ncalls / args.streams:6.2f}/stream  {where}")
    return "\n".join(lines)


async def _streams(args: argparse.Namespace, port: int, count: int, tokens: int = 1) -> None:
    """`count` streams of `tokens` back to back on one connection; each must come back whole."""
    path, api = ROUTES[args.route]
    body = request_body(api, True, _pace(args, tokens))
    request = request_head("POST", path, f"127.0.0.1:{port}", body, {"Content-Type": "application/json"}) + body
    markers = MARKERS[api]
    connection: Connection = await connect("127.0.0.1", port)
    try:
        for _ in range(count):
            response = await connection.exchange(request, None)
            if response.status != 200 or markers.done not in response.body or markers.content not in response.body:
                raise RuntimeError(f"bad stream: {response.status} {response.body[:300]!r}")
    finally:
        connection.close()


def _pace(args: argparse.Namespace, tokens: int) -> Pace:
    return Pace(tokens=tokens, gap_ms=args.gap_ms if tokens > 1 else 0.0)


def _control(pid: int, option: str) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=120)


def _total(dump: Path) -> int:
    match = TOTALS.search(dump.read_text(errors="replace"))
    return int(match.group(1)) if match else 0


def _calls(dump: Path, function: str) -> int:
    """How many times the measured window called `function` (by its name in the dump), from any caller.

    Reads per stream tell how the upstream's events came in: each event is its own segment, and a
    process slowed down by valgrind often finds several in one read. The instruction figure moves
    with that share (an extra read is an extra parse and wake-up), so A/B runs should read alike.
    """
    ids: dict[str, str] = {}
    total = 0
    callee = None
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("fn=", "cfn=")):
            key, _, rest = line.partition("=")
            number, _, name = rest.partition(" ")
            if name:
                ids[number] = name
            callee = ids.get(number, rest) if key == "cfn" else callee
        elif line.startswith("calls=") and callee is not None:
            if callee == function:
                total += int(line[6:].split()[0])
            callee = None
    return total


def _per_stream(row: str, streams: int) -> str:
    """`1,234,567 (12.3%)  file:function` as thousands of instructions per stream."""
    count, _, rest = row.strip().partition(" ")
    return f"{int(count.replace(',', '')) / streams / 1e3:9.1f} k  {rest.strip()}"


def _label(args: argparse.Namespace) -> str:
    if args.target == "passthrough":
        return "pass-through /v1"
    return f"sluice {ROUTES[args.route][0]} ({args.root})"


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the target did not start:\n{log.read_text(errors='replace')[-2000:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    sys.exit(main())
