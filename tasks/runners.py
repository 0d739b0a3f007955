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
import threading
from typing import Any, Callable, Iterator, List, Set

from fabric.runners import Remote as FabricRemote
from invoke.runners import Local as InvokeLocal


#: The runs whose output an out_stream consumes as it comes (streamed verbs), while they run.
STREAMING: Set["LinearOutput"] = set()
STREAMING_LOCK = threading.Lock()


def end_streams() -> None:
    """End every streamed run now, as invoke's own timeout does: over SSH its
    channel closes, locally its process is killed; the agents, their reader
    gone, end their followers on the host."""
    with STREAMING_LOCK:
        running = list(STREAMING)
    for runner in running:
        try:
            runner.kill()
        except (AttributeError, OSError):  # not started yet, or already gone
            pass


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

    def run(self, command: str, **kwargs: Any) -> Any:
        streamed = getattr(kwargs.get("out_stream"), "consumes_output", False)
        if streamed:
            with STREAMING_LOCK:
                STREAMING.add(self)
        try:
            return super().run(command, **kwargs)  # type: ignore[misc]
        finally:
            if streamed:
                with STREAMING_LOCK:
                    STREAMING.discard(self)

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


class Remote(LinearOutput, FabricRemote):
    """Fabric's runner over SSH, with linear output handling."""


class Local(LinearOutput, InvokeLocal):
    """invoke's local runner, with linear output handling."""

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        # invoke passes Ctrl-C on as \x03 on the program's stdin. The agent's is
        # closed once its request is written (writing would raise), and the agent,
        # in our process group, got the terminal's SIGINT itself.
        if not (self.process and self.process.stdin and self.process.stdin.closed):
            super().send_interrupt(interrupt)


#: For a collection's configuration: {"runners": RUNNERS}.
RUNNERS = {"remote": Remote, "local": Local}
