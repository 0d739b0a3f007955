"""What one measured call gives (Sample), the case that collects a call's samples
over the repetitions (Case), and how a list of values is summed up."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    seconds: float
    rc: int
    maxrss_kib: int
    cpu_seconds: float = 0.0  # user + system time of the client and the children it reaped
    busy: float = 0.0         # share of the machine's CPU time in use during the call (all cores, 0-1)
    sessions: int = 0      # "Starting session:" lines, all hosts of the call
    connections: int = 0   # "Accepted publickey" lines, all hosts of the call
    output: str = ""

    def result(self) -> dict[str, Any] | None:
        """A one-host `--json` call's result: the last line of the output that is an object."""
        for line in reversed(self.output.strip().splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    return None
        return None


@dataclass
class Case:
    name: str
    label: str
    group: str
    hosts: int = 1
    # A client launched through bench/measure.py, with SSH counts, CPU time and RSS of its
    # own; else a time the case took by itself (Django's ready time, an import, the agent alone).
    client: bool = True
    samples: list[Sample] = field(default_factory=list)  # one per measured rep, failed ones too
    reps: list[int] = field(default_factory=list)         # the rep each sample belongs to
    failures: list[str] = field(default_factory=list)

    def by_rep(self) -> dict[int, Sample]:
        return {rep: sample for rep, sample in zip(self.reps, self.samples) if sample.rc == 0}

    def add(self, rep: int, sample: Sample) -> None:
        self.samples.append(sample)
        self.reps.append(rep)


def spread(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_count(values: Sequence[float]) -> str:
    """A count per host: its median, and the range when the values differ."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    text = f"{statistics.median(values):g}"
    return text if low == high else f"{text} ({low:g}-{high:g})"
