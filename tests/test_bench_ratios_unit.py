"""The benchmark's arithmetic on made-up samples: which repetitions pair up, the
ratios and differences computed from them, each target's verdict at, below and
above its limit, and the SSH commands counted per host. No root, no sshd."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bench.layout import fanout_sizes
from bench.ratios import Ratio, command_targets, pairwise, pairwise_samples, ratios, targets
from bench.results import case_row, memory_lines
from bench.samples import Case, Sample, fmt_count, spread


def case(name: str, times: Sequence[float], *, reps: Sequence[int] | None = None,
         failed: Sequence[int] = (), hosts: int = 1, sessions: Sequence[int] | None = None,
         busy: Sequence[float] | None = None) -> Case:
    """A case with one sample per time, in repetitions 1, 2, ... unless reps says
    otherwise; the samples of the reps in `failed` exited 1."""
    reps = list(reps or range(1, len(times) + 1))
    made = Case(name, name.replace("_", " "), "made up", hosts)
    for index, (rep, seconds) in enumerate(zip(reps, times)):
        made.add(rep, Sample(seconds, 1 if rep in failed else 0, 40 * 1024,
                             sessions=sessions[index] if sessions else hosts,
                             busy=busy[index] if busy else 0.0))
    return made


def cases(*made: Case) -> dict[str, Case]:
    return {item.name: item for item in made}


def by_name(items: Sequence[Ratio]) -> dict[str, Ratio]:
    return {item.name: item for item in items}


# --- pairing by repetition


def test_pairwise_pairs_samples_of_the_same_repetition_only() -> None:
    measured = cases(case("a", [2.0, 4.0, 9.0], reps=[1, 2, 3]), case("b", [1.0, 3.0], reps=[1, 3]))
    # rep 2 has no b sample, so only reps 1 and 3 pair up: 2/1 and 9/3.
    assert pairwise(measured, ["a", "b"], lambda a, b: a / b) == [2.0, 3.0]


def test_pairwise_drops_failed_repetitions_on_either_side() -> None:
    measured = cases(case("a", [2.0, 4.0, 9.0], failed=[3]), case("b", [1.0, 2.0, 3.0], failed=[1]))
    assert pairwise(measured, ["a", "b"], lambda a, b: a / b) == [2.0]


def test_pairwise_with_a_missing_case_gives_nothing() -> None:
    assert pairwise(cases(case("a", [1.0])), ["a", "b"], lambda a, b: a / b) == []


def test_pairwise_of_three_cases_keeps_the_repetitions_all_three_have() -> None:
    measured = cases(case("s", [1.0, 2.0, 3.0]), case("t", [0.5, 0.5], reps=[2, 3]),
                     case("d", [0.25, 0.25, 0.25], failed=[3]))
    assert pairwise(measured, ["s", "t", "d"], lambda s, t, d: s - t - d) == [1.25]


def test_pairwise_samples_hands_over_whole_samples() -> None:
    measured = cases(case("a", [2.0], sessions=[3]), case("b", [1.0], sessions=[1]))
    assert pairwise_samples(measured, ["a", "b"], lambda a, b: a.sessions - b.sessions) == [2]


# --- summaries


def test_spread_is_the_median_and_the_range() -> None:
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0}
    assert spread([]) == {"median": None, "min": None, "max": None}


def test_a_count_shows_its_range_only_when_the_values_differ() -> None:
    assert fmt_count([1.0, 1.0, 1.0]) == "1"
    assert fmt_count([1.0, 3.0, 2.0]) == "2 (1-3)"
    assert fmt_count([]) == "-"


def test_a_case_row_leaves_failed_samples_out() -> None:
    row = case_row(case("fabserve_status", [0.3, 9.0, 0.5], failed=[2], hosts=2, sessions=[2, 6, 4]))
    assert row["times"] == [0.3, 0.5] and row["reps"] == [1, 3]
    assert (row["median"], row["min"], row["max"]) == (0.4, 0.3, 0.5)
    assert row["ssh_commands_per_host"] == [1.0, 2.0]
    assert row["peak_rss_mib"] == [40.0, 40.0]


def test_memory_lines_name_one_host_and_the_largest_fan_out() -> None:
    rows = {name: case_row(case(name, [0.3])) for name in
            ("fanout_status_1", "fanout_stop_1", "fanout_status_5", "fanout_status_10", "fanout_stop_10")}
    assert memory_lines(rows, [1, 5, 10]) == [
        "fab status on 1 host(s): 40.0 MiB peak RSS (max over reps)",
        "fab stop on 1 host(s): 40.0 MiB peak RSS (max over reps)",
        "fab status on 10 host(s): 40.0 MiB peak RSS (max over reps)",
        "fab stop on 10 host(s): 40.0 MiB peak RSS (max over reps)",
    ]
    assert memory_lines(rows, []) == []


@pytest.mark.parametrize(("hosts", "sizes"), [(1, [1]), (2, [1, 2]), (10, [1, 5, 10]), (12, [1, 5, 10, 12]),
                                              (20, [1, 5, 10, 20]), (30, [1, 5, 10, 20, 30])])
def test_fan_out_sizes_go_up_to_the_bed_and_include_it(hosts: int, sizes: list[int]) -> None:
    assert fanout_sizes(hosts) == sizes


# --- verdicts


def test_a_ratio_is_the_median_of_its_pairs() -> None:
    ratio = Ratio("r", "r", [1.0, 3.0, 2.0], limit=2.0)
    assert ratio.median == 2.0 and ratio.verdict() == "PASS"
    row = ratio.row()
    assert (row["median"], row["min"], row["max"], row["verdict"]) == (2.0, 1.0, 3.0, "PASS")


@pytest.mark.parametrize(("status", "verdict"), [(1.0, "PASS"), (1.1, "PASS"), (1.2, "MISS")])
def test_status_target_at_below_and_above_its_limit(status: float, verdict: str) -> None:
    measured = cases(case("fabserve_status", [status]), case("fab_trivial", [1.0]))
    ratio = by_name(ratios(measured, [], cpus=2))["status/fab_trivial"]
    assert ratio.limit == 1.10 and ratio.values == [status] and ratio.verdict() == verdict


@pytest.mark.parametrize(("stop", "verdict"), [(1.1, "PASS"), (1.2, "PASS"), (1.3, "MISS")])
def test_stop_target_at_below_and_above_its_limit(stop: float, verdict: str) -> None:
    measured = cases(case("fabserve_stop", [stop]), case("fab_trivial", [1.0]))
    assert by_name(ratios(measured, [], cpus=2))["stop/fab_trivial"].verdict() == verdict


@pytest.mark.parametrize(("start", "overhead", "verdict"),
                         [(0.19375, 0.1, "PASS"), (0.24375, 0.15, "PASS"), (0.29375, 0.2, "MISS")])
def test_start_overhead_is_start_less_trivial_less_django_ready(start: float, overhead: float,
                                                                verdict: str) -> None:
    measured = cases(case("fabserve_start", [start]), case("fab_trivial", [0.0625]),
                     case("django_ready", [0.03125]))
    ratio = by_name(ratios(measured, [], cpus=2))["start-fab_trivial-django_ready"]
    assert ratio.unit == "s" and ratio.limit == 0.15
    assert ratio.values == [pytest.approx(overhead)] and ratio.verdict() == verdict


def test_start_overhead_at_exactly_its_limit_passes() -> None:
    measured = cases(case("fabserve_start", [0.24375]), case("fab_trivial", [0.0625]),
                     case("django_ready", [0.03125]))
    assert by_name(ratios(measured, [], cpus=2))["start-fab_trivial-django_ready"].values == [0.15]


@pytest.mark.parametrize(("status", "verdict"), [(0.3, "PASS"), (0.35, "PASS"), (0.4, "MISS")])
def test_ansible_target_at_below_and_above_its_limit(status: float, verdict: str) -> None:
    measured = cases(case("fabserve_status", [status]), case("ansible_shell_status", [1.0]))
    assert by_name(ratios(measured, [], cpus=2))["status/ansible_shell"].verdict() == verdict


@pytest.mark.parametrize(("ten", "verdict"), [(1.4, "PASS"), (1.5, "PASS"), (1.6, "MISS")])
def test_fan_out_target_at_below_and_above_its_limit(ten: float, verdict: str) -> None:
    measured = cases(case("fanout_status_1", [1.0]), case("fanout_status_10", [ten], hosts=10))
    found = by_name(ratios(measured, [1, 5, 10], cpus=2))
    assert found["fanout_status_10/1"].limit == 1.5 and found["fanout_status_10/1"].verdict() == verdict
    assert found["fanout_stop_10/1"].values == [] and found["fanout_stop_10/1"].verdict() == "n/a"


def test_only_ten_hosts_have_a_fan_out_target() -> None:
    measured = cases(case("fanout_status_1", [1.0]), case("fanout_status_5", [2.0], hosts=5),
                     case("fanout_status_20", [3.0], hosts=20))
    found = by_name(ratios(measured, [1, 5, 20], cpus=2))
    assert found["fanout_status_5/1"].limit is None and found["fanout_status_5/1"].verdict() is None
    assert found["fanout_status_20/1"].values == [3.0] and found["fanout_status_20/1"].limit is None


def test_a_target_without_measurements_is_kept_as_n_a_and_untargeted_ratios_are_dropped() -> None:
    found = by_name(ratios(cases(case("fabserve_status", [1.0])), [], cpus=2))
    assert found["status/fab_trivial"].verdict() == "n/a"
    assert found["status/ansible_shell"].verdict() == "n/a"
    assert "status/ssh_true" not in found and "status/ansible_raw" not in found


@pytest.mark.parametrize(("rsync", "tar", "ratio", "verdict"),
                         [(2.0, 1.0, 1.5, "PASS"), (1.0, 2.0, 1.5, "PASS"), (1.2, 3.0, 1.25, "PASS"),
                          (1.0, 1.25, 1.5, "PASS"), (0.5, 0.75, 3.0, "MISS")])
def test_first_sync_is_measured_against_the_faster_of_rsync_and_tar(rsync: float, tar: float, ratio: float,
                                                                      verdict: str) -> None:
    measured = cases(case("sync_first", [1.5]), case("rsync_first", [rsync]), case("tar_first", [tar]))
    first = by_name(ratios(measured, [], cpus=2))["sync_first/fastest"]
    assert first.limit == 1.5 and first.values == [ratio] and first.verdict() == verdict


@pytest.mark.parametrize(("one", "verdict"), [(0.45, "PASS"), (0.6, "PASS"), (0.61, "MISS")])
def test_re_sync_target_at_below_and_above_its_limit(one: float, verdict: str) -> None:
    measured = cases(case("sync_one", [one]), case("rsync_one", [0.4]), case("tar_first", [0.1]))
    assert by_name(ratios(measured, [], cpus=2))["sync_one/rsync_one"].verdict() == verdict


def test_fan_out_seconds_per_extra_host() -> None:
    measured = cases(case("fanout_status_1", [0.3, 0.4]), case("fanout_status_5", [0.7, 0.8], hosts=5))
    found = by_name(ratios(measured, [1, 5], cpus=2))
    assert found["fanout_status_per_host"].values == [pytest.approx(0.1), pytest.approx(0.1)]
    assert found["fanout_status_per_host"].label == "fabserve status: s per extra host (1->5)"


def test_fan_out_machine_cpu_per_extra_host_is_busy_share_times_wall_time_times_cores() -> None:
    measured = cases(case("fanout_stop_1", [1.0], busy=[0.5]), case("fanout_stop_3", [2.0], hosts=3, busy=[0.75]))
    # 3 hosts: 0.75 * 2.0 s * 4 cores = 6 CPU s; 1 host: 0.5 * 1.0 * 4 = 2; (6 - 2) / 2 extra hosts.
    assert by_name(ratios(measured, [1, 3], cpus=4))["fanout_stop_cpu_per_host"].values == [2.0]


def client_case(name: str, hosts: int, cpu_seconds: float, maxrss_mib: float) -> Case:
    made = Case(name, name, "made up", hosts)
    made.add(1, Sample(1.0, 0, int(maxrss_mib * 1024), cpu_seconds, sessions=hosts))
    return made


@pytest.mark.parametrize("ten_cpu, verdict", [(0.535, "PASS"), (0.5, "PASS"), (0.6, "MISS")])
def test_client_cpu_per_extra_host_is_in_ms_with_a_target_from_ten_hosts(ten_cpu: float, verdict: str) -> None:
    measured = cases(client_case("fanout_stop_1", 1, 0.4, 44), client_case("fanout_stop_5", 5, 0.44, 45),
                     client_case("fanout_stop_10", 10, ten_cpu, 46.8))
    found = by_name(ratios(measured, [1, 5, 10], cpus=2))
    ten = found["fanout_stop_client_cpu_per_host_10"]
    # (0.535 - 0.4) s over 9 extra hosts: 15 ms, the limit.
    assert ten.unit == "ms" and ten.limit == 15.0 and ten.verdict() == verdict
    assert ten.values == [pytest.approx((ten_cpu - 0.4) * 1000 / 9)]
    assert found["fanout_stop_client_cpu_per_host_5"].limit is None
    assert found["fanout_stop_client_cpu_per_host_5"].values == [pytest.approx(10.0)]


def test_client_peak_rss_per_extra_host_is_in_mib() -> None:
    measured = cases(client_case("fanout_status_1", 1, 0.4, 44), client_case("fanout_status_10", 10, 0.5, 46.7))
    rss = by_name(ratios(measured, [1, 10], cpus=2))["fanout_status_client_rss_per_host_10"]
    assert rss.unit == "MiB" and rss.limit == 0.3 and rss.values == [pytest.approx(0.3, abs=0.001)]
    assert rss.verdict() == "PASS"


# --- the target lines


def target_lines(measured: dict[str, Case], sizes: Sequence[int]) -> dict[str, dict[str, str]]:
    rows = [ratio.row() for ratio in ratios(measured, sizes, cpus=2)]
    return {line["name"]: line for line in targets(rows, measured, sizes)}


def test_target_lines_give_value_and_limit_in_the_ratio_s_unit() -> None:
    measured = cases(case("fabserve_status", [1.2]), case("fabserve_start", [0.29375]),
                     case("fab_trivial", [0.0625]), case("django_ready", [0.03125]))
    lines = target_lines(measured, [1])
    assert lines["start-fab_trivial-django_ready"] == {
        "name": "start-fab_trivial-django_ready", "label": "start - trivial - Django ready (overhead)",
        "limit": "<= 0.15s", "value": "0.20s", "verdict": "MISS"}
    assert lines["status/fab_trivial"]["limit"] == "<= 1.1x"
    assert lines["status/fab_trivial"]["value"] == "19.20x"
    assert lines["status/ansible_shell"]["value"] == "-" and lines["status/ansible_shell"]["verdict"] == "n/a"


@pytest.mark.parametrize("sizes", [[], [1], [1, 2], [1, 5]])
def test_a_bed_of_fewer_than_ten_hosts_cannot_judge_the_fan_out_target(sizes: list[int]) -> None:
    line = target_lines({}, sizes)["fanout_10/1"]
    assert line == {"name": "fanout_10/1", "label": "10 hosts / 1 host", "limit": "<= 1.5x", "value": "-",
                    "verdict": "n/a (fewer than 10 hosts)"}


def test_a_bed_of_ten_hosts_judges_the_fan_out_target() -> None:
    measured = cases(case("fanout_status_1", [1.0]), case("fanout_status_10", [1.4], hosts=10))
    lines = target_lines(measured, [1, 5, 10])
    assert "fanout_10/1" not in lines
    assert lines["fanout_status_10/1"]["verdict"] == "PASS" and lines["fanout_status_10/1"]["value"] == "1.40x"
    assert lines["fanout_stop_10/1"]["verdict"] == "n/a"


@pytest.mark.parametrize(("logs", "verdict"), [(0.5, "PASS"), (0.75, "PASS"), (0.8, "MISS")])
def test_big_log_target_is_logs_over_ssh_tail_at_most_three(logs: float, verdict: str) -> None:
    measured = cases(case("fabserve_logs", [logs]), case("ssh_tail", [0.25]))
    ratio = by_name(ratios(measured, [], cpus=2))["logs/ssh_tail"]
    assert ratio.limit == 3.0 and ratio.values == [logs / 0.25] and ratio.verdict() == verdict


def test_a_big_log_is_one_ssh_command() -> None:
    measured = cases(case("fabserve_logs", [0.5, 0.6], sessions=[1, 2]))
    assert command_targets(measured, []) == [{
        "name": "ssh_commands:fabserve_logs", "label": "SSH commands/host, fabserve logs",
        "values": [1.0, 2.0], "limit": "== 1", "verdict": "MISS"}]


# --- SSH commands per host


def test_one_ssh_command_per_host_in_every_sample_passes() -> None:
    measured = cases(case("fabserve_stop", [0.4, 0.5]), case("fanout_stop_2", [0.5, 0.6], hosts=2, sessions=[2, 2]))
    rows = {row["name"]: row for row in command_targets(measured, [1, 2])}
    assert set(rows) == {"ssh_commands:fabserve_stop", "ssh_commands:fanout_stop_2"}
    assert rows["ssh_commands:fanout_stop_2"]["values"] == [1.0, 1.0]
    assert rows["ssh_commands:fanout_stop_2"]["verdict"] == "PASS"
    assert rows["ssh_commands:fanout_stop_2"]["label"] == "SSH commands/host, fanout stop 2"


def test_one_extra_ssh_command_on_any_host_in_any_sample_misses() -> None:
    measured = cases(case("fanout_status_2", [0.5, 0.6], hosts=2, sessions=[2, 3]))
    row = command_targets(measured, [2])[0]
    assert row["values"] == [1.0, 1.5] and row["verdict"] == "MISS"
    assert target_lines(measured, [2])["ssh_commands:fanout_status_2"]["value"] == "1.25 (1-1.5)"


def test_ssh_commands_of_failed_samples_are_not_counted() -> None:
    measured = cases(case("fabserve_start", [0.6, 9.0], failed=[2], sessions=[1, 4]))
    assert command_targets(measured, [])[0]["values"] == [1.0]
    assert command_targets(measured, [])[0]["verdict"] == "PASS"


def test_an_operation_whose_every_sample_failed_misses_its_ssh_command_target() -> None:
    measured = cases(case("fabserve_restart", [9.0], failed=[1]))
    assert command_targets(measured, []) == [{
        "name": "ssh_commands:fabserve_restart", "label": "SSH commands/host, fabserve restart",
        "values": [], "limit": "== 1", "verdict": "MISS"}]


def test_ssh_commands_are_judged_for_fabserve_operations_only() -> None:
    measured = cases(case("fab_trivial", [0.2], sessions=[1]), case("ansible_shell_status", [0.7], sessions=[6]),
                     case("fabserve_status", [0.3]))
    assert [row["name"] for row in command_targets(measured, [])] == ["ssh_commands:fabserve_status"]


@pytest.mark.parametrize(("sessions", "verdict"), [(1, "PASS"), (2, "PASS"), (3, "MISS")])
def test_a_sync_takes_at_most_two_ssh_commands_per_host(sessions: int, verdict: str) -> None:
    measured = cases(case("sync_one", [0.5], sessions=[sessions]), case("rsync_one", [0.3], sessions=[1]))
    assert command_targets(measured, []) == [{
        "name": "ssh_commands:sync_one", "label": "SSH commands/host, sync one", "values": [float(sessions)],
        "limit": "<= 2", "verdict": verdict}]


@pytest.mark.parametrize(("installed", "verdict"), [(0.29, "PASS"), (0.306, "PASS"), (0.31, "MISS")])
def test_installed_status_is_at_most_fab_status_in_the_checkout_times_1_02(installed: float, verdict: str) -> None:
    measured = cases(case("installed_status", [installed]), case("fabserve_status", [0.3]))
    ratio = by_name(ratios(measured, [], cpus=2))["installed_status/fabserve_status"]
    assert ratio.limit == 1.02 and ratio.values == [installed / 0.3] and ratio.verdict() == verdict


def test_the_installed_status_is_one_ssh_command() -> None:
    measured = cases(case("installed_status", [0.3], sessions=[1]))
    assert command_targets(measured, [])[0]["verdict"] == "PASS"


# --- companion processes


@pytest.mark.parametrize(("verb", "three", "verdict"),
                         [("start", 1.0, "PASS"), ("start", 1.3, "PASS"), ("start", 1.4, "MISS"),
                          ("stop", 1.3, "PASS"), ("stop", 1.4, "MISS")])
def test_a_three_process_instance_takes_at_most_1_3_times_one_process(verb: str, three: float,
                                                                       verdict: str) -> None:
    measured = cases(case(f"procs_{verb}_3", [three]), case(f"procs_{verb}_1", [1.0]))
    found = by_name(ratios(measured, [], cpus=2))
    ratio = found[f"procs_{verb}_3/1"]
    assert ratio.limit == 1.3 and ratio.values == [three] and ratio.verdict() == verdict
    assert ratio.label == f"procs {verb} 3/1: three processes / one"
    assert found[f"procs_{verb}_3-1"].unit == "s"
    assert found[f"procs_{verb}_3-1"].values == [pytest.approx(three - 1.0)]


def test_without_the_procs_group_its_targets_are_n_a_and_its_differences_dropped() -> None:
    found = by_name(ratios(cases(case("fabserve_start", [0.6])), [], cpus=2))
    assert found["procs_start_3/1"].verdict() == "n/a" and found["procs_stop_3/1"].verdict() == "n/a"
    assert "procs_start_3-1" not in found and "procs_stop_3-1" not in found


def test_every_procs_operation_is_one_ssh_command() -> None:
    measured = cases(case("procs_start_1", [0.6]), case("procs_start_3", [1.0], sessions=[2]),
                     case("procs_stop_1", [0.4]), case("procs_stop_3", [0.5]))
    verdicts = {row["name"]: row["verdict"] for row in command_targets(measured, [])}
    assert verdicts == {"ssh_commands:procs_start_1": "PASS", "ssh_commands:procs_start_3": "MISS",
                        "ssh_commands:procs_stop_1": "PASS", "ssh_commands:procs_stop_3": "PASS"}


# --- exposed previews


@pytest.mark.parametrize(("verb", "exposed", "verdict"),
                         [("start", 1.0, "PASS"), ("start", 1.2, "PASS"), ("start", 1.3, "MISS"),
                          ("stop", 1.1, "PASS"), ("stop", 1.25, "MISS")])
def test_an_exposed_start_and_stop_take_at_most_1_2_times_a_plain_one(verb: str, exposed: float,
                                                                       verdict: str) -> None:
    measured = cases(case(f"expose_{verb}_exposed", [exposed]), case(f"expose_{verb}_plain", [1.0]))
    ratio = by_name(ratios(measured, [], cpus=2))[f"expose_{verb}/plain"]
    assert ratio.limit == 1.2 and ratio.values == [exposed] and ratio.verdict() == verdict
    assert ratio.label == f"{verb} --expose / {verb} without"
    difference = by_name(ratios(measured, [], cpus=2))[f"expose_{verb}-plain"]
    assert difference.unit == "s" and difference.values == [pytest.approx(exposed - 1.0)]


def test_every_expose_operation_is_one_ssh_command() -> None:
    measured = cases(case("expose_start_plain", [0.6]), case("expose_start_exposed", [0.7], sessions=[2]),
                     case("expose_stop_plain", [0.4]), case("expose_stop_exposed", [0.5]))
    verdicts = {row["name"]: row["verdict"] for row in command_targets(measured, [])}
    assert verdicts == {"ssh_commands:expose_start_plain": "PASS", "ssh_commands:expose_start_exposed": "MISS",
                        "ssh_commands:expose_stop_plain": "PASS", "ssh_commands:expose_stop_exposed": "PASS"}
