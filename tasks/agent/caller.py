"""The client that called the agent, for verbs that run until it goes away:
gone once the agent's parent changes, once nothing reads its stdout, or once
SIGINT, SIGTERM or SIGHUP came.
"""

import os
import signal


class Caller(object):
    """The client reading our stdout, for a verb that runs until it goes away
    (manage, logs --follow). Gone once our parent changes (the SSH session or
    shell that ran us is gone), once nothing reads stdout any more (dash, fish
    and tcsh stay our parent after the session ends; an SSH channel closed by
    the client), or once SIGINT, SIGTERM or SIGHUP came: a terminal's Ctrl-C
    reaches a local agent too, and the client ends a local run with TERM. While
    it is watched (a with block), those signals only mark it gone, so the agent
    ends what it runs before it exits instead of dying and leaving it behind."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, out):
        import select
        self.parent = os.getppid()
        self.signalled = False
        self.reader = select.poll()
        # No events asked for: poll then reports only POLLERR or POLLHUP, the reader gone.
        self.reader.register(out.fileno(), 0)
        self.previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self.mark)
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def mark(self, signum, frame):
        self.signalled = True

    def gone(self, wait=0.0):
        """Whether the caller went away, waiting up to `wait` seconds for its reader to go."""
        if self.signalled or os.getppid() != self.parent:
            return True
        return bool(self.reader.poll(wait * 1000)) or self.signalled
