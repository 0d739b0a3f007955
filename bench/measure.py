"""Run one command; write its wall time, exit code, CPU time and peak RSS as JSON.

usage: /usr/bin/python3 -I -S measure.py RESULT_FILE ARGV...

The benchmark starts every client through this small process rather than
directly: a child inherits its parent's RSS high-water mark until exec and the
kernel keeps the larger of the two, so a client spawned by the benchmark's own
(bigger) Python would report that Python's peak instead of its own. From here
the floor is this launcher's few MiB. The time runs from posix_spawn to wait4,
so the launcher's own start-up is not counted.
"""

import json
import os
import sys
import time


def main() -> None:
    result, argv = sys.argv[1], sys.argv[2:]
    began = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - began
    with open(result, "w") as out:
        json.dump({"seconds": seconds, "rc": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss,
                   "cpu_seconds": usage.ru_utime + usage.ru_stime}, out)


if __name__ == "__main__":
    main()
