"""bench/run's command line, the benchmark's one entry point: select the groups of
cases (bench/cases.py), set up the bed, run them, report, tear down."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bed import BedError

from bench.cases import GROUPS, NAMES, PROFILE, chosen
from bench.hosts import Bed
from bench.layout import PORT, PROJECT, RESULTS, fanout_sizes
from bench.profile import profile
from bench.ratios import ratios, targets
from bench.results import case_row, compare, loadavg, machine, memory_lines, render, write_json
from bench.runner import Runner
from bench.shell import BenchError, log

IDLE_LOAD = 0.7


def wait_idle(limit: float) -> None:
    """Wait up to `limit` seconds for the 1-minute load average to fall below IDLE_LOAD."""
    deadline = time.monotonic() + limit
    if limit > 0 and float(loadavg()) >= IDLE_LOAD:
        log(f"bench: load average {float(loadavg()):.2f}; waiting up to {limit:.0f} s for it to fall below {IDLE_LOAD}")
        while float(loadavg()) >= IDLE_LOAD and time.monotonic() < deadline:
            time.sleep(5)
        log(f"bench: load average now {float(loadavg()):.2f}; starting")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description="fabserve's benchmark (run as root).")
    parser.add_argument("--reps", type=int, default=5, help="measured repetitions of every case (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument("--hosts", type=int, default=20,
                        help="hosts for the fan-out and the module cases, 1-99 (default 20)")
    parser.add_argument("--skip", default="", help=f"comma list of groups to leave out: {', '.join(NAMES)} "
                                                   "(ansible and diy also leave out that client's CI flow; "
                                                   "ansible also the module)")
    parser.add_argument("--only", help="comma list of the groups to run (default: all); --skip still applies")
    parser.add_argument("--out", type=Path, help="JSON file to write (default bench/results/<timestamp>.json)")
    parser.add_argument("--compare", type=Path, help="an earlier JSON result to compare the medians with")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="first wait up to S seconds for the 1-minute load average to fall below "
                             f"{IDLE_LOAD} (other jobs on the machine skew the numbers)")
    args = parser.parse_args(argv)
    args.skip = words(args.skip)
    if args.reps < 1 or args.warmup < 0 or not 1 <= args.hosts <= 99:
        parser.error("--reps >= 1, --warmup >= 0, --hosts 1-99")
    try:
        args.names = chosen(args.skip, None if args.only is None else words(args.only))
    except ValueError as exc:
        parser.error(f"--skip/--only: {exc}")
    return args


def words(text: str) -> set[str]:
    return {word.strip() for word in text.split(",") if word.strip()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        log("bench: run as root (it creates users, network namespaces and sshd instances)")
        return 2

    def on_signal(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    wait_idle(args.wait_idle)
    groups = [group for group in GROUPS if group.name in args.names]
    meta = {**machine(), "reps": args.reps, "warmup": args.warmup, "hosts": args.hosts,
            "skip": sorted(args.skip), "groups": [name for name in NAMES if name in args.names],
            "project": PROJECT, "port": PORT}
    sizes = fanout_sizes(args.hosts) if "fanout" in args.names else []
    bed = Bed(args.hosts if any(group.wide for group in groups) else 1, with_ansible="ansible" not in args.skip)
    prof = None
    try:
        log(f"bench: setting up {bed.count} host(s)")
        bed.open()
        runner = Runner(bed, args)
        runner.run(groups)
        if PROFILE in args.names:
            prof = profile(bed)
    except (BenchError, BedError) as exc:
        log(f"bench: {exc}")
        return 1
    except KeyboardInterrupt:
        log("bench: interrupted; cleaning up")
        return 130
    finally:
        bed.close()

    meta["loadavg_end"] = loadavg()
    cases = runner.cases
    rows = {name: case_row(case) for name, case in cases.items()}
    ratio_rows = [ratio.row() for ratio in ratios(cases, sizes, os.cpu_count() or 1)]
    target_rows = targets(ratio_rows, cases, sizes)
    memory = memory_lines(rows, sizes)
    notes = [line for group in groups if group.notes for line in group.notes(runner)]
    result = {"meta": meta, "cases": rows, "ratios": ratio_rows, "targets": target_rows,
              "memory": memory, "notes": notes, "profile": prof}
    text = render(meta, rows, ratio_rows, target_rows, prof, memory, notes)
    if args.compare:
        text += "\n" + compare(args.compare, rows)
    print(text, flush=True)
    out = args.out or RESULTS / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    write_json(out, result)
    print(f"\nwritten: {out}")
    failed = [failure for row in rows.values() for failure in row["failures"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
