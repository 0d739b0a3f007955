"""bench/run's command line: set up the bed, run the cases, report, tear down."""

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

from bench.cases import Runner
from bench.hosts import Bed
from bench.layout import PORT, PROJECT, RESULTS, fanout_sizes
from bench.profile import profile
from bench.ratios import ratios, targets
from bench.results import case_row, compare, loadavg, machine, memory_lines, render, write_json
from bench.shell import BenchError, log

IDLE_LOAD = 0.7
SKIPPABLE = {"ansible", "diy", "fanout", "many", "module", "profile"}


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
    parser.add_argument("--hosts", type=int, default=20, help="hosts for the fan-out, 1-99 (default 20)")
    parser.add_argument("--skip", default="", help="comma list of: ansible, diy, fanout, many, module, profile")
    parser.add_argument("--out", type=Path, help="JSON file to write (default bench/results/<timestamp>.json)")
    parser.add_argument("--compare", type=Path, help="an earlier JSON result to compare the medians with")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="first wait up to S seconds for the 1-minute load average to fall below "
                             f"{IDLE_LOAD} (other jobs on the machine skew the numbers)")
    args = parser.parse_args(argv)
    args.skip = {word.strip() for word in args.skip.split(",") if word.strip()}
    if args.skip - SKIPPABLE or args.reps < 1 or args.warmup < 0 or not 1 <= args.hosts <= 99:
        parser.error("--reps >= 1, --warmup >= 0, --hosts 1-99, --skip from ansible,diy,fanout,many,module,profile")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        log("bench: run as root (it creates users, network namespaces and sshd instances)")
        return 2

    def on_signal(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    wait_idle(args.wait_idle)
    meta = {**machine(), "reps": args.reps, "warmup": args.warmup, "hosts": args.hosts,
            "skip": sorted(args.skip), "project": PROJECT, "port": PORT}
    sizes = fanout_sizes(args.hosts) if "fanout" not in args.skip else []
    bed = Bed(args.hosts if sizes else 1, with_ansible="ansible" not in args.skip)
    prof = None
    try:
        log(f"bench: setting up {bed.count} host(s)")
        bed.open()
        runner = Runner(bed, args)
        runner.run()
        if "profile" not in args.skip:
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
    result = {"meta": meta, "cases": rows, "ratios": ratio_rows, "targets": target_rows,
              "memory": memory, "profile": prof}
    text = render(meta, rows, ratio_rows, target_rows, prof, memory)
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
