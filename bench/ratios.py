"""Ratios between cases, computed pair by pair within a repetition, and the
targets' PASS/MISS verdicts. Pure functions of the cases' samples."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.samples import Case, Sample, fmt_count, spread

FABSERVE_OPS = ["fabserve_status", "fabserve_start", "fabserve_stop", "fabserve_restart", "fabserve_logs",
                "installed_status",
                "fabserve_list_20", "fabserve_start_auto",
                "procs_start_1", "procs_start_3", "procs_stop_1", "procs_stop_3",
                "expose_start_plain", "expose_start_exposed", "expose_stop_plain", "expose_stop_exposed"]
INSTALLED_LIMIT = 1.02  # the installed `fabserve` command: at most this many times `fab` in the checkout
LOGS_LIMIT = 3.0  # a big log's tail: at most this many times OpenSSH's `tail -n`
FANOUT_TARGET_SIZE = 10  # fan-out target: this many hosts take at most FANOUT_LIMIT x one host
FANOUT_LIMIT = 1.5
# Each extra host of a fan-out costs the client at most this much CPU (ms) and peak RSS (MiB).
CLIENT_CPU_PER_HOST_LIMIT = 15.0
CLIENT_RSS_PER_HOST_LIMIT = 0.3
LIST_LIMIT = 1.2  # list on a host with 20 instances: at most this many times status of one
AUTO_LIMIT = 1.05  # start --port auto: at most this many times start --port N
# sync: a first sync at most this many times the faster of rsync -a and tar | ssh, a re-sync this many times rsync -a
SYNC_LIMIT = 1.5
# up of an unchanged tree (sync, setup, migrate, start) at most this many times start alone
UP_LIMIT = 1.5
# start and stop of a three-process instance (Procfile: web, worker, watch) at most this many times one process
PROCS_LIMIT = 1.3
# start --expose (published through the host's Caddy) and its stop (route withdrawn) at most this many times without
EXPOSE_LIMIT = 1.2


@dataclass
class Ratio:
    name: str
    label: str
    values: list[float]
    unit: str = "x"            # "x": a ratio; "s": a difference in seconds; "ms", "MiB": a cost per host
    limit: float | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def verdict(self) -> str | None:
        if self.limit is None:
            return None
        if self.median is None:
            return "n/a"
        return "PASS" if self.median <= self.limit else "MISS"

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "unit": self.unit, "limit": self.limit,
                "values": self.values, **spread(self.values), "verdict": self.verdict()}


def pairwise(cases: dict[str, Case], names: Sequence[str], fn: Callable[..., float]) -> list[float]:
    """fn over the wall times of `names`' samples that belong to the same repetition."""
    return pairwise_samples(cases, names, lambda *samples: fn(*(sample.seconds for sample in samples)))


def pairwise_samples(cases: dict[str, Case], names: Sequence[str], fn: Callable[..., float]) -> list[float]:
    """fn over the samples of `names` that belong to the same repetition."""
    if not all(name in cases for name in names):
        return []
    reps = [cases[name].by_rep() for name in names]
    common = sorted(set.intersection(*(set(rep) for rep in reps)))
    return [fn(*(rep[index] for rep in reps)) for index in common]


def machine_cpu_seconds(sample: Sample, cpus: int) -> float:
    """CPU seconds the whole machine spent during a call, all cores."""
    return sample.busy * sample.seconds * cpus


def ratios(cases: dict[str, Case], sizes: Sequence[int], cpus: int) -> list[Ratio]:
    """Every ratio the cases allow; those with no values and no target are left out."""
    out: list[Ratio] = []

    def ratio(name: str, label: str, a: str, b: str, limit: float | None = None) -> None:
        out.append(Ratio(name, label, pairwise(cases, [a, b], lambda x, y: x / y), "x", limit))

    def difference(name: str, label: str, a: str, b: str) -> None:
        """What case `a` takes beyond case `b`, in seconds, pair by pair."""
        out.append(Ratio(name, label, pairwise(cases, [a, b], lambda x, y: x - y), "s"))

    ratio("fab_trivial/ssh_true", "Fabric floor / OpenSSH", "fab_trivial", "ssh_true")
    ratio("status/fab_trivial", "status / trivial fab task", "fabserve_status", "fab_trivial", 1.10)
    ratio("stop/fab_trivial", "stop / trivial fab task", "fabserve_stop", "fab_trivial", 1.20)
    ratio("restart/fab_trivial", "restart / trivial fab task", "fabserve_restart", "fab_trivial")
    ratio("start/fab_trivial", "start / trivial fab task", "fabserve_start", "fab_trivial")
    out.append(Ratio("start-fab_trivial-django_ready", "start - trivial - Django ready (overhead)",
                     pairwise(cases, ["fabserve_start", "fab_trivial", "django_ready"],
                              lambda s, t, d: s - t - d), "s", 0.15))
    ratio("logs/ssh_tail", "logs --lines 100000 / ssh tail -n (100 MB log)", "fabserve_logs", "ssh_tail",
          LOGS_LIMIT)
    ratio("installed_status/fabserve_status", "installed status / fab status (checkout)",
          "installed_status", "fabserve_status", INSTALLED_LIMIT)
    ratio("import_installed/import_checkout", "import time: installed / checkout",
          "import_installed", "import_checkout")
    ratio("list_20/status_of_20", "list of 20 instances / status of one", "fabserve_list_20",
          "fabserve_status_of_20", LIST_LIMIT)
    ratio("start_auto/start_port", "start --port auto / start --port N", "fabserve_start_auto",
          "fabserve_start_port", AUTO_LIMIT)
    out.append(Ratio("sync_first/fastest", "first sync, 2,000 files / the faster of rsync -a and tar | ssh",
                     pairwise(cases, ["sync_first", "rsync_first", "tar_first"],
                              lambda ours, rsync, tar: ours / min(rsync, tar)), "x", SYNC_LIMIT))
    ratio("sync_one/rsync_one", "re-sync of one changed file / rsync -a", "sync_one", "rsync_one", SYNC_LIMIT)
    ratio("up_unchanged/up_start", "up of an unchanged tree / start alone", "up_unchanged", "up_start", UP_LIMIT)
    for verb in ("start", "stop"):
        ratio(f"procs_{verb}_3/1", f"procs {verb} 3/1: three processes / one", f"procs_{verb}_3",
              f"procs_{verb}_1", PROCS_LIMIT)
        difference(f"procs_{verb}_3-1", f"procs {verb} 3 - 1: what two companions add", f"procs_{verb}_3",
                   f"procs_{verb}_1")
    for verb in ("start", "stop"):
        ratio(f"expose_{verb}/plain", f"{verb} --expose / {verb} without", f"expose_{verb}_exposed",
              f"expose_{verb}_plain", EXPOSE_LIMIT)
        difference(f"expose_{verb}-plain", f"{verb} --expose - {verb} without", f"expose_{verb}_exposed",
                   f"expose_{verb}_plain")
    for verb in ("status", "start", "stop", "restart"):
        ratio(f"{verb}/ssh_true", f"{verb} / ssh true", "fabserve_" + verb, "ssh_true")
    ratio("ssh_agent_status/ssh_true", "agent status over OpenSSH / ssh true", "ssh_agent_status", "ssh_true")
    ratio("status/ssh_agent_status", "fab status / agent status over OpenSSH", "fabserve_status",
          "ssh_agent_status")
    for verb in ("status", "start", "stop"):
        ratio(f"{verb}/ansible_shell", f"{verb} / ansible -m shell", "fabserve_" + verb,
              "ansible_shell_" + verb, 0.35)
    for verb in ("status", "start", "stop"):
        ratio(f"{verb}/ansible_raw", f"{verb} / ansible -m raw", "fabserve_" + verb, "ansible_raw_" + verb)
        ratio(f"{verb}/fabric_diy", f"{verb} / plain Fabric", "fabserve_" + verb, "fabric_" + verb)
    # fabserve's CI flow is the only one that checks anything; it should also be the fastest.
    ratio("ciflow/fabric_diy", "CI flow: fabserve / plain Fabric", "ciflow_fabserve", "ciflow_fabric", 1.0)
    ratio("ciflow/ansible_shell", "CI flow: fabserve / ansible -m shell + ssh -L", "ciflow_fabserve",
          "ciflow_ansible", 1.0)
    ratio("ciflow_steps/fabric_diy", "CI flow, one fab per step / plain Fabric", "ciflow_fabserve_steps",
          "ciflow_fabric")
    ratio("ciflow_steps/ansible_shell", "CI flow, one fab per step / ansible -m shell + ssh -L",
          "ciflow_fabserve_steps", "ciflow_ansible")
    for size in sizes[1:]:
        for verb in ("status", "stop"):
            ratio(f"fanout_{verb}_{size}/1", f"{verb} {size} hosts / 1 host", f"fanout_{verb}_{size}",
                  f"fanout_{verb}_1", FANOUT_LIMIT if size == FANOUT_TARGET_SIZE else None)
        ratio(f"fanout_trivial_{size}/1", f"trivial fab {size} hosts / 1 host (serial)",
              f"fanout_trivial_{size}", "fanout_trivial_1")
    if len(sizes) > 1:
        top = sizes[-1]
        for verb, what in (("status", "fabserve status"), ("stop", "fabserve stop"), ("trivial", "trivial fab (serial)")):
            out.append(Ratio(f"fanout_{verb}_per_host", f"{what}: s per extra host (1->{top})",
                             pairwise(cases, [f"fanout_{verb}_{top}", f"fanout_{verb}_1"],
                                      lambda n, one: (n - one) / (top - 1)), "s"))
        # Every host of this bed shares the machine's cores, so a call on N hosts
        # needs at least its machine CPU (client, sshds, agents, servers) over the
        # cores in wall time, however concurrent it is: this is that CPU's growth.
        for verb in ("status", "stop"):
            out.append(Ratio(f"fanout_{verb}_cpu_per_host", f"{verb}: machine CPU s per extra host (1->{top})",
                             pairwise_samples(cases, [f"fanout_{verb}_{top}", f"fanout_{verb}_1"],
                                              lambda n, one: (machine_cpu_seconds(n, cpus)
                                                              - machine_cpu_seconds(one, cpus)) / (top - 1)),
                             "s"))
    for size in sizes[1:]:
        # The client's own cost of a host more: its CPU time and its peak RSS.
        for verb in ("status", "stop"):
            names = [f"fanout_{verb}_{size}", f"fanout_{verb}_1"]
            target = size >= FANOUT_TARGET_SIZE
            out.append(Ratio(f"fanout_{verb}_client_cpu_per_host_{size}",
                             f"{verb}: client CPU ms per extra host (1->{size})",
                             pairwise_samples(cases, names, lambda n, one, size=size:
                                              (n.cpu_seconds - one.cpu_seconds) * 1000 / (size - 1)),
                             "ms", CLIENT_CPU_PER_HOST_LIMIT if target else None))
            out.append(Ratio(f"fanout_{verb}_client_rss_per_host_{size}",
                             f"{verb}: client peak RSS MiB per extra host (1->{size})",
                             pairwise_samples(cases, names, lambda n, one, size=size:
                                              (n.maxrss_kib - one.maxrss_kib) / 1024 / (size - 1)),
                             "MiB", CLIENT_RSS_PER_HOST_LIMIT if target else None))
    for size in sizes:
        ratio(f"fanout_status_{size}/trivial", f"status {size} hosts / trivial fab {size} hosts",
              f"fanout_status_{size}", f"fanout_trivial_{size}")
    return [item for item in out if item.values or item.limit is not None]


#: sync's operations and the SSH commands each may take per host: plan, then apply (docs/usage.md).
SYNC_OPS = {"sync_first": 2, "sync_one": 2}


def command_targets(cases: dict[str, Case], sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Exactly one SSH command per host per fabserve operation, in every sample; at most
    SYNC_OPS' number for a sync."""
    names = FABSERVE_OPS + [f"fanout_{verb}_{size}" for size in sizes for verb in ("status", "stop")]
    rows = []
    for name in names + list(SYNC_OPS):
        case = cases.get(name)
        if not case or not case.samples:
            continue
        most = SYNC_OPS.get(name, 1)
        per_host = [sample.sessions / case.hosts for sample in case.samples if sample.rc == 0]
        kept = all(value == 1 for value in per_host) if most == 1 else all(value <= most for value in per_host)
        rows.append({"name": "ssh_commands:" + name, "label": "SSH commands/host, " + case.label,
                     "values": per_host, "limit": "== 1" if most == 1 else f"<= {most}",
                     "verdict": "PASS" if per_host and kept else "MISS"})
    return rows


def targets(ratio_rows: Sequence[dict[str, Any]], cases: dict[str, Case], sizes: Sequence[int]) -> list[dict[str, Any]]:
    """One line per target: the ratios that have a limit, the fan-out target when the bed
    is too small for it, and the SSH commands per host of every fabserve operation."""
    out = [{"name": row["name"], "label": row["label"], "limit": f"<= {row['limit']:g}{row['unit']}",
            "value": "-" if row["median"] is None else f"{row['median']:.2f}{row['unit']}",
            "verdict": row["verdict"]} for row in ratio_rows if row["limit"] is not None]
    if FANOUT_TARGET_SIZE not in sizes:
        out.append({"name": f"fanout_{FANOUT_TARGET_SIZE}/1", "label": f"{FANOUT_TARGET_SIZE} hosts / 1 host",
                    "limit": f"<= {FANOUT_LIMIT:g}x", "value": "-", "verdict": f"n/a (fewer than {FANOUT_TARGET_SIZE} hosts)"})
    for row in command_targets(cases, sizes):
        out.append({"name": row["name"], "label": row["label"], "limit": row["limit"],
                    "value": fmt_count(row["values"]), "verdict": row["verdict"]})
    return out
