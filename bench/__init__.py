"""fabserve's benchmark (run it through bench/run, as root).

Every "host" is a network namespace of its own with an OpenSSH sshd in it,
reached over a veth pair (10.222.<i>.2), and an unprivileged user of its own
(fabserve-bench<i>) owning a copy of the example project at ~/site. So every
host has its own port 8000, its own state directory and its own processes to
search, and one `fab -H bench01,bench02,... status --project ~/site --port 8000`
addresses them all exactly as it would address real machines. Only the CPU,
the kernel and the process table are shared.

Each case runs --warmup times untimed, then --reps times; the cases of one
repetition run back to back, so the ratios are computed pair by pair within a
repetition. Wall time is measured from spawning the client to reaping it (with
wait4, which also gives its peak RSS). SSH commands and connections are counted
on the server side, from each sshd's LogLevel VERBOSE log ("Starting session:"
and "Accepted publickey" lines) written during the call.

Nothing here fails because a target is missed; the exit status is 1 only when
the setup or a measured command itself failed (the numbers would be wrong).

Modules: layout (paths, the project, fan-out sizes), shell (setup commands,
messages), samples (Sample, Case, summaries), hosts (the test bed), runner (one
measured call, the Runner the groups record into, Group), the groups of cases
(baseline, operations, package, logs, many, ciflow, usual, fanout, ansible_module,
lifetimes), cases (their registry), ratios (ratios and targets), profile
(client-side profile), results (table, comparison, machine facts), main (command
line, the one entry point).
"""

import sys
from pathlib import Path

# The test bed's primitives (tests/bed: processes, ports, sshd, accounts, venvs) serve
# the benchmark too, imported as `bed`.
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
