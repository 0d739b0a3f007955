"""What a run reports: one row per case, the machine it ran on, the peak memory
lines, the printed table, the comparison with an earlier run, and the JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.layout import REPO
from bench.samples import Case, fmt_count, spread



def case_row(case: Case) -> dict[str, Any]:
    good = [sample for sample in case.samples if sample.rc == 0]
    row = {"label": case.label, "group": case.group, "hosts": case.hosts,
           "times": [sample.seconds for sample in good], **spread([sample.seconds for sample in good]),
           "reps": [rep for rep, sample in zip(case.reps, case.samples) if sample.rc == 0],
           "failures": case.failures}
    if case.client:
        row["ssh_commands_per_host"] = [sample.sessions / case.hosts for sample in good]
        row["ssh_connections_per_host"] = [sample.connections / case.hosts for sample in good]
        row["peak_rss_mib"] = [sample.maxrss_kib / 1024 for sample in good]  # floor: the launcher's ~9 MiB
        row["client_cpu_seconds"] = [sample.cpu_seconds for sample in good]
        row["machine_busy"] = [sample.busy for sample in good]
    return row


def memory_lines(rows: dict[str, dict[str, Any]], sizes: Sequence[int]) -> list[str]:
    """The client's peak RSS on one host and on the most hosts of the fan-out."""
    lines = []
    for size in sorted({1, max(sizes)} if sizes else set()):
        for verb in ("status", "stop"):
            row = rows.get(f"fanout_{verb}_{size}")
            if row and row.get("peak_rss_mib"):
                lines.append(f"fab {verb} on {size} host(s): {max(row['peak_rss_mib']):.1f} MiB peak RSS "
                             "(max over reps)")
    return lines


def case_line(case: str, median: str, span: str, commands: str, connections: str, cpu: str, busy: str,
              rss: str) -> str:
    """One line of the cases' table: the header or a case, in its columns."""
    return f"{case:<40} {median:>8} {span:>11} {commands:>8} {connections:>8} {cpu:>6} {busy:>6} {rss:>7}"


def ratio_line(ratio: str, median: str, span: str, target: str, verdict: str) -> str:
    """One line of the ratios' table: the header or a ratio, in its columns."""
    return f"{ratio:<46} {median:>8} {span:>17} {target:>8} {verdict:>7}"


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_cases(rows: dict[str, dict[str, Any]]) -> list[str]:
    header = case_line("case", "median s", "min-max s", "SSH cmds", "SSH conn", "CPU s", "busy", "RSS MiB")
    lines = [header, "-" * len(header)]
    group = None
    for row in rows.values():
        if row["group"] != group:
            group = row["group"]
            lines.append(f"[{group}]")
        rss = row.get("peak_rss_mib") or []
        cpu = row.get("client_cpu_seconds") or []
        busy = row.get("machine_busy") or []
        lines.append(case_line(
            "  " + row["label"], fmt_s(row["median"]),
            "-" if row["min"] is None else f"{row['min']:.2f}-{row['max']:.2f}",
            fmt_count(row.get("ssh_commands_per_host", [])), fmt_count(row.get("ssh_connections_per_host", [])),
            f"{statistics.median(cpu):.2f}" if cpu else "-",
            f"{statistics.median(busy):.0%}" if busy else "-",
            f"{max(rss):.0f}" if rss else "-"))
    return lines


def render_ratios(ratio_rows: Sequence[dict[str, Any]]) -> list[str]:
    header = ratio_line("ratio (pairwise within a rep)", "median", "min-max", "target", "")
    lines = [header, "-" * len(header)]
    for row in ratio_rows:
        unit = row["unit"]
        values = row["values"]
        lines.append(ratio_line(
            row["label"], "-" if row["median"] is None else f"{row['median']:.2f}{unit}",
            "-" if not values else f"{min(values):.2f}-{max(values):.2f}",
            "" if row["limit"] is None else f"<= {row['limit']:g}{unit}", row["verdict"] or ""))
    return lines


def render_profile(prof: dict[str, Any]) -> list[str]:
    lines = ["", "client-side profile of `fab status` on one host "
             f"(wall {prof.get('wall_seconds') or 0:.3f} s unprofiled, median of 3)"]
    if prof.get("error"):
        lines.append("  " + prof["error"])
    imports = prof.get("imports") or {}
    if imports.get("total_seconds") is not None:
        lines.append(f"  -X importtime: {imports['total_seconds']:.3f} s importing; "
                     "largest imports (cumulative, self):")
        lines += [f"    {item['seconds']:>7.3f} s {item['self_seconds']:>7.3f} s  {'  ' * item['depth']}{item['module']}"
                  for item in imports["top"]]
    if prof.get("functions"):
        lines.append("  cProfile (cumulative; profiling inflates these):")
        lines += [f"    {item['seconds']:>7.3f} s  {item['what']}" for item in prof["functions"]]
    for verb, found in (prof.get("breakdown") or {}).items():
        lines += ["", f"time breakdown of `fab {verb}` on one host, server running ("
                      "client: the run of median wall of 3 timed ones; remote: one instrumented agent run)"]
        lines += [f"  {'-' if seconds is None else f'{seconds:.3f}':>7} s  {what}" for what, seconds in found["rows"]]
        lines += ["  " + line for line in found["host_lines"]]
    return lines


def render(meta: dict[str, Any], rows: dict[str, dict[str, Any]], ratio_rows: Sequence[dict[str, Any]],
           targets: Sequence[dict[str, Any]], prof: dict[str, Any] | None, memory: Sequence[str],
           notes: Sequence[str]) -> str:
    lines = [f"fabserve benchmark  {meta['date']}  {meta['cpus']} CPUs, {meta['mem_gib']} GiB RAM, "
             f"{meta['reps']} reps (+{meta['warmup']} warm-up), {meta['hosts']} hosts, fabserve {meta['commit']}, "
             f"load {meta['loadavg_start']} -> {meta['loadavg_end']}", ""]
    lines += render_cases(rows)
    lines += ["", "SSH cmds / SSH conns: per host per call, counted in the sshd logs "
              "(\"Starting session:\" / \"Accepted publickey\").",
              "CPU s: the client's user+system time. busy: the machine's CPU use during the call, all cores",
              "(client, hosts' sshd and agents, servers: they share them). RSS: the client's peak resident",
              "memory (max over reps; 9 MiB is the launcher's floor).", ""]
    lines += render_ratios(ratio_rows)
    lines += notes
    lines += ["", "targets"]
    lines += [f"  {target['verdict']:<5} {target['label']}: {target['value']} (target {target['limit']})"
              for target in targets]
    if memory:
        lines += ["", "peak memory"] + ["  " + line for line in memory]
    if prof:
        lines += render_profile(prof)
    failures = [failure for row in rows.values() for failure in row["failures"]]
    if failures:
        lines += ["", "FAILED calls (left out of the numbers above):"]
        lines += ["  " + failure.replace("\n", "\n    ") for failure in failures]
    return "\n".join(lines)


def compare(old_path: Path, rows: dict[str, dict[str, Any]]) -> str:
    old = json.loads(old_path.read_text())
    lines = ["", f"compared with {old_path} ({old.get('meta', {}).get('date', '?')})",
             f"{'case':<44} {'before s':>9} {'now s':>9} {'change':>8}"]
    for name, row in rows.items():
        before = old.get("cases", {}).get(name, {}).get("median")
        now = row["median"]
        if before is None or now is None:
            continue
        lines.append(f"{row['label']:<44} {before:>9.3f} {now:>9.3f} {100 * (now - before) / before:>+7.0f}%")
    return "\n".join(lines)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()


def loadavg() -> str:
    """The 1-minute load average, as /proc/loadavg prints it."""
    return Path("/proc/loadavg").read_text().split()[0]


def machine() -> dict[str, Any]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_start": loadavg(),
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kib / 1024 / 1024),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        "commit": (git("rev-parse", "--short", "HEAD") or "?") + ("+dirty" if git("status", "--porcelain",
                                                                                   "tasks") else ""),
    }


def write_json(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
