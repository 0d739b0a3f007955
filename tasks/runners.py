"""invoke's runners with output handling that stays linear in the output's size.

invoke reads 1000 bytes at a time and, after every read, joins all output
captured so far to show it to watchers (fabserve has none): a 10 MB answer
then costs seconds and 20 MB more than a minute. It also decodes each read on
its own, so a UTF-8 character split between two reads turns into garbage.
These runners read 64 KiB at a time, decode incrementally, join nothing
unless a watcher is there, and keep no copy of output that an out_stream
consumes itself (a `logs --follow` may run for days). An agent's request
(RequestStream) goes to its stdin in one write, its stdin closed right after.
"""

import codecs
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Set

from fabric.runners import Remote as FabricRemote
from invoke.runners import Local as InvokeLocal
from paramiko.ssh_exception import SSHException


#: The runs whose output an out_stream consumes as it comes (streamed verbs), while they run.
STREAMING: Set["LinearOutput"] = set()
#: The runs one SIGINT ends (those started under `interrupting`), while they run.
INTERRUPTIBLE: Set["LinearOutput"] = set()
STREAMING_LOCK = threading.RLock()  # also taken in a signal handler, whose thread may hold it
#: Set by the SIGINT that sigint_ends_runs turns into ending the runs.
INTERRUPTED = threading.Event()
#: .interrupting: the runs this thread starts are INTERRUPTIBLE.
THREAD = threading.local()


class Interrupted(Exception):
    """A SIGINT (Ctrl-C) ended the runs under `interrupting`."""


@contextmanager
def sigint_ends_runs() -> Iterator[None]:
    """In the main thread, the only one Python hands signals to, while tasks run
    there or in the executor's threads: the first SIGINT ends every run started
    under `interrupting` (over SSH its channel closes; locally the agent gets
    TERM), so each agent ends what it runs and exits; those starting later are
    ended as they start. With none started yet (still connecting), and at a
    second SIGINT (no more waiting for the agents), SIGINT interrupts as usual.
    Elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    INTERRUPTED.clear()  # an earlier task's Ctrl-C ended that task

    def handler(signum: int, frame: Any) -> None:
        again = INTERRUPTED.is_set()
        INTERRUPTED.set()
        with STREAMING_LOCK:
            started = [runner for runner in INTERRUPTIBLE if runner.started]
        if again or not started:
            raise KeyboardInterrupt
        # Ended in a thread of its own: closing a channel takes locks this thread may hold.
        threading.Thread(target=end_runs, args=(started,), name="fabserve-interrupt", daemon=True).start()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def interrupting() -> Iterator[None]:
    """Around one task's runs that a SIGINT ends (manage, logs), as
    sigint_ends_runs says (installed here for a task in the main thread, by the
    executor for several hosts); the block then raises Interrupted. invoke would
    instead send ^C to the agent's stdin, which no agent reads without a
    terminal, and wait for a second SIGINT."""
    THREAD.interrupting = True
    try:
        with sigint_ends_runs():
            yield
    except BaseException:  # what the ended run raises (no result, a closed channel), or KeyboardInterrupt
        if INTERRUPTED.is_set():
            raise Interrupted() from None
        raise
    finally:
        THREAD.interrupting = False
    if INTERRUPTED.is_set():
        raise Interrupted()


def end_runs(runs: List["LinearOutput"]) -> None:
    """End each of `runs` now (see end_streams)."""
    for runner in runs:
        try:
            runner.kill()
        except (AttributeError, OSError, EOFError, SSHException):  # not started yet, or already gone
            pass  # (over SSH: the transport closed as the run ended by itself, at the same moment)


def end_streams() -> None:
    """End every streamed run now, as invoke's own timeout does: over SSH its
    channel closes, locally its agent gets TERM (Local.kill); the agents, their
    reader gone, end their followers on the host."""
    with STREAMING_LOCK:
        running = list(STREAMING)
    end_runs(running)


class RequestStream:
    """An in_stream holding a program's whole input (the agent's request): the
    runners below write it at once and close the program's stdin (over SSH: the
    channel's EOF). invoke's own loop, made for a terminal, would read it one
    byte per 10 ms and hold the run open until the next 10 ms after the
    program ended; it also takes this stream, in one read."""

    def __init__(self, text: str) -> None:
        self.text = text

    def read(self, size: int = -1) -> str:
        text, self.text = self.text, ""
        return text


class Discarded(list):  # type: ignore[type-arg]
    """A capture buffer that keeps nothing."""

    def append(self, item: Any) -> None:
        pass


class LinearOutput:
    """Mixed into a runner: see the module's docstring."""

    read_chunk_size = 65536
    watchers: List[Any]
    encoding: str
    started = False  # whether the command was started (a channel or a process to end)

    def run(self, command: str, **kwargs: Any) -> Any:
        streamed = getattr(kwargs.get("out_stream"), "consumes_output", False)
        interruptible = getattr(THREAD, "interrupting", False)
        with STREAMING_LOCK:
            if streamed:
                STREAMING.add(self)
            if interruptible:
                INTERRUPTIBLE.add(self)
        try:
            return super().run(command, **kwargs)  # type: ignore[misc]
        finally:
            with STREAMING_LOCK:
                STREAMING.discard(self)
                INTERRUPTIBLE.discard(self)

    def start(self, *args: Any, **kwargs: Any) -> None:
        super().start(*args, **kwargs)  # type: ignore[misc]
        self.started = True
        if INTERRUPTED.is_set() and self in INTERRUPTIBLE:  # a SIGINT came before it could be ended
            self.kill()  # type: ignore[attr-defined]

    def handle_stdin(self, input_: Any, output: Any, echo: bool = False) -> None:
        if not isinstance(input_, RequestStream):
            super().handle_stdin(input_, output, echo)  # type: ignore[misc]
            return
        self.write_proc_stdin(input_.read())  # type: ignore[attr-defined]
        self.close_proc_stdin()  # type: ignore[attr-defined]

    def respond(self, buffer_: List[str]) -> None:
        if self.watchers:
            super().respond(buffer_)  # type: ignore[misc]

    def read_proc_output(self, reader: Callable[[int], bytes]) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder(self.encoding)("replace")
        while True:
            data = reader(self.read_chunk_size)
            if not data:
                break
            text = decoder.decode(data)
            if text:
                yield text
        rest = decoder.decode(b"", final=True)
        if rest:
            yield rest

    def handle_stdout(self, buffer_: List[str], hide: bool, output: Any) -> None:
        keep = Discarded() if getattr(output, "consumes_output", False) else buffer_
        super().handle_stdout(keep, hide, output)  # type: ignore[misc]


DEAD_THREAD_LOOK = 0.1


class Remote(LinearOutput, FabricRemote):
    """Fabric's runner over SSH, with linear output handling."""

    def wait(self) -> None:
        """Until the command exits (or an I/O thread died), as invoke waits, but
        woken by the exit status's arrival rather than at its next 10 ms look:
        a dead I/O thread is then all it looks for, every DEAD_THREAD_LOOK s,
        which spares each host of a long fan-out 90 wake-ups a second."""
        while not (self.process_is_finished or self.has_dead_threads):
            self.channel.status_event.wait(DEAD_THREAD_LOOK)


class Local(LinearOutput, InvokeLocal):
    """invoke's local runner, with linear output handling."""

    def kill(self) -> None:
        """TERM rather than invoke's KILL: the agent then ends what it runs before
        it exits (a manage command, in a session of its own, would outlive a
        killed agent); an agent not watching its caller just ends."""
        self.process.send_signal(signal.SIGTERM)

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        # invoke passes Ctrl-C on as \x03 on the program's stdin. The agent's is
        # closed once its request is written (writing would raise), and the agent,
        # in our process group, got the terminal's SIGINT itself.
        if not (self.process and self.process.stdin and self.process.stdin.closed):
            super().send_interrupt(interrupt)


#: For a collection's configuration: {"runners": RUNNERS}.
RUNNERS = {"remote": Remote, "local": Local}
