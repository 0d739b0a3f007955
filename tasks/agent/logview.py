"""The handler of logs: a log's last lines, in the result or streamed, and
following it as it grows; web's log, or another process's of a Procfile.
"""

import os
import sys

from .protocol import AgentError, RUNNING, STOPPED, WEB
from .procfile import PROCESS_NAME
from .logfiles import PUNCHED_MARK, copy_out, follow, hole_end, kept_bytes, open_log, tail_span, tail_text
from .locate import located
from .verbs import describe


def do_logs(inst):
    """The log's last lines (web's, or the `process` the request names): in the result, or with `stream` (human output)
    written to stdout as they are read, before the result; with `follow`, then
    everything appended until the caller goes away, and no result."""
    lines = inst.req.lines
    out = sys.stdout.buffer
    name = inst.req.process or WEB
    if name != WEB:  # a Procfile's other process: its own log
        if not PROCESS_NAME.match(name):
            raise AgentError(f"no process {name!r}: names are letters, digits, _ and -")
        inst = inst.companion(name)
    found, _ = located(inst)  # first: a running server's log is cut to the cap before it is read
    log = f"{inst.log}.1" if inst.req.previous else inst.log
    with open_log(inst, log) as handle:
        hole = hole_end(handle.fileno())
        offset, end, count = tail_span(handle, lines, hole)
        front = b""
        if hole and offset == hole and count < lines:  # back to a punched cut: its marker first, as after any cut
            front, count = os.pread(handle.fileno(), PUNCHED_MARK, 0).rstrip(b" \n") + b"\n", count + 1
        try:
            if inst.req.follow:
                copy_out(handle, offset, end, out, front)
                follow(handle, out)
                return None
            if inst.req.stream:
                copy_out(handle, offset, end, out, front)
                extra = {}
            else:
                extra = {"lines": tail_text(front + b"".join(kept_bytes(handle, offset, end)), lines)}
        except (BrokenPipeError, KeyboardInterrupt):  # the caller went away
            return None
    return describe(inst, found, ok=True, changed=False,
                    state=RUNNING if found and found.members() else STOPPED,
                    message=f"{count} lines of {log}", **extra)
