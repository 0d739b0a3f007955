"""The tunnel's forwarder in-process, with real sockets: connections carried both
ways (half-closes too), many at once, and closing it leaves no thread and no
descriptor behind, also with connections still open; a port in use is an
error at once."""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bed import wait_for
from tasks.tunnels import Forwarder, answers


class Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"page {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    # socketserver's listen backlog of 5 overflows under 20 connections at once,
    # and some of those then end without an answer: the forwarder is under test here.
    request_queue_size = 128


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    """An HTTP server on 127.0.0.1 standing in for runserver on the host."""
    httpd = Server(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[:2]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def open_socket(destination: tuple[str, int], origin: tuple[str, int]) -> socket.socket:
    """The other end as a plain TCP connection: what a direct-tcpip channel is to the host."""
    return socket.create_connection(destination, timeout=10)


def tunnel_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "fabserve-tunnel"]


def descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def held() -> tuple[set[threading.Thread], set[str]]:
    """This process's threads and open descriptors."""
    return set(threading.enumerate()), descriptors()


def left_since(before: tuple[set[threading.Thread], set[str]]) -> tuple[set[threading.Thread], set[str]]:
    """Threads and descriptors opened since `before` and still open (one that an
    earlier test left and that ends meanwhile is not this test's)."""
    threads, fds = held()
    return threads - before[0], fds - before[1]


def get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        conn.shutdown(socket.SHUT_WR)  # a half-close: the answer must still come back
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def carries_only(forwarder: Forwarder, client: socket.socket) -> bool:
    """True once `client`'s connection is the one the forwarder carries: one of the
    requests before it may still be finishing, and a connection still waiting in
    the listener's backlog would be reset by the close, not ended."""
    with forwarder.lock:
        return [conn.getpeername() for conn, _ in forwarder.active] == [client.getsockname()]


def test_forwarded_requests_in_parallel_and_nothing_left_after_close(server):
    before = held()
    forwarder = Forwarder(0, server, open_socket)
    assert forwarder.port > 0
    assert answers(forwarder.port, "/healthz") is None
    with ThreadPoolExecutor(20) as pool:
        pages = list(pool.map(lambda index: get(forwarder.port, f"/{index}"), range(40)))
    assert all(page.startswith(b"HTTP/1.0 200") and page.endswith(f"page /{index}".encode())
               for index, page in enumerate(pages))
    idle = socket.create_connection(("127.0.0.1", forwarder.port))  # open, never sends: close must not wait for it
    assert wait_for(lambda: carries_only(forwarder, idle))  # carried, its other end open
    port = forwarder.port
    forwarder.close()
    forwarder.close()  # a second close is harmless
    assert not tunnel_threads()  # close joined every one of them
    assert idle.recv(10) == b""  # the tunnel ended it
    idle.close()
    # The stand-in server's own handler of that connection ends once it sees the end.
    assert wait_for(lambda: left_since(before) == (set(), set()))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_port_in_use_is_an_error_at_once_and_leaves_nothing(server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        before = held()
        with pytest.raises(OSError) as caught:
            Forwarder(taken.getsockname()[1], server, open_socket)
        assert caught.value.errno == errno.EADDRINUSE
        assert left_since(before) == (set(), set())


def test_a_destination_that_refuses_gives_no_answer_and_says_why(server):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()
    before = held()
    forwarder = Forwarder(0, closed, open_socket)
    failed = answers(forwarder.port, "/")
    assert failed  # the connection was accepted, then closed without an answer
    assert "Connection refused" in forwarder.failure
    forwarder.close()
    assert not tunnel_threads()
    assert wait_for(lambda: left_since(before) == (set(), set()))
