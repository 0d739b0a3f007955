"""Ports and the sockets that hold them: the listeners in /proc/net/tcp{,6},
which processes hold a socket, who holds a port (named for messages, as far
as this user can see), whether a port answers, and choosing a free port from
a range for --port auto.
"""

import os
import sys
import time

from .protocol import PORT_WAIT, connect_host
from .procfs import all_pids, owner, read_file, user_name
from .signals import pauses


def tcp_tables():
    """The texts of /proc/net/tcp and tcp6 (those that can be read)."""
    texts = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            texts.append(read_file(name))
        except OSError:
            continue
    return texts


def listen_inodes(port, listening=None):
    """The inodes of sockets listening on `port`: from `listening` (see
    listeners) when a caller looks at many ports at one moment, else read now."""
    return (listeners(tcp_tables()) if listening is None else listening).get(port, set())


def listening_sockets(text):
    """(port, inode, hex local address) of each listening socket in /proc/net/tcp or tcp6 text."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 10 and fields[3] == "0A":  # 0A: TCP_LISTEN
            hex_addr, hex_port = fields[1].rsplit(":", 1)
            yield int(hex_port, 16), fields[9], hex_addr


def listeners(texts):
    """Port -> inodes of the sockets listening on it, in /proc/net/tcp{,6} `texts`."""
    found = {}
    for text in texts:
        for port, inode, _ in listening_sockets(text):
            found.setdefault(port, set()).add(inode)
    return found


def pids_holding(inodes, pids):
    """Those of `pids` holding one of the socket `inodes` open."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(os.path.join(fd_dir, name)) in wanted:
                    holders.append(pid)
                    break
            except OSError:
                continue
    return holders


def port_answers(addr, port):
    """Whether a TCP connection to the server bound to `addr`:`port` is accepted."""
    # _socket, not socket: the address is a literal one (protocol.ADDRESS), and
    # importing socket (its enums) would cost every status a few milliseconds.
    import _socket
    host = connect_host(addr)
    try:
        conn = _socket.socket(_socket.AF_INET6 if ":" in host else _socket.AF_INET, _socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        conn.settimeout(1.0)
        conn.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        conn.close()


def packed(addr):
    """`addr` as bytes (4 or 16), the form /proc/net/tcp's hex decodes to."""
    import socket
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def listen_address(hex_addr):
    """The bytes of a /proc/net/tcp{,6} local address: 32-bit words in host order."""
    raw = bytes.fromhex(hex_addr)
    return b"".join(raw[i:i + 4][::-1] if sys.byteorder == "little" else raw[i:i + 4]
                    for i in range(0, len(raw), 4))


def conflicts(listener, ours):
    """Whether a listener bound to bytes `listener` holds the port for `ours`:
    the same address, either one a wildcard, or ours as an IPv4-mapped one."""
    if listener.startswith(b"\0" * 10 + b"\xff\xff"):
        listener = listener[12:]
    return listener == ours or not listener.strip(b"\0") or not ours.strip(b"\0")


def parse_listeners(text, port):
    """(inode, local address bytes) of the sockets listening on `port` in
    /proc/net/tcp or tcp6 text."""
    return [(inode, listen_address(hex_addr)) for bound, inode, hex_addr in listening_sockets(text) if bound == port]


def held_in(texts, port, addr):
    """The inodes of listeners in /proc/net/tcp{,6} `texts` that keep `addr`:`port` from being bound."""
    ours = packed(addr)
    return {inode for text in texts for inode, bound in parse_listeners(text, port) if conflicts(bound, ours)}


def port_held(port, addr):
    """The inodes of listeners that keep `addr`:`port` from being bound, after
    waiting up to PORT_WAIT for a closing one to go."""
    deadline = time.time() + PORT_WAIT
    for pause in pauses():
        held = held_in(tcp_tables(), port, addr)
        if not held or time.time() >= deadline:
            return held
        time.sleep(pause)


def socket_owners(inodes):
    """The uids /proc/net/tcp{,6} gives as owners of the listening sockets
    `inodes`: every user's sockets show there, whoever may see their processes."""
    uids = set()
    for text in tcp_tables():
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 10 and fields[3] == "0A" and fields[9] in inodes:
                uids.add(int(fields[7]))
    return sorted(uids)


def holders(inodes):
    """Who holds the listening sockets `inodes`, for a message: each process
    this user can see as `pid N (command line) of user U`, else the sockets'
    owners (another user's processes are not visible to a user's agent)."""
    named = []
    for pid in pids_holding(inodes, all_pids()):
        try:
            argv = read_file(f"/proc/{pid}/cmdline", "rb").split(b"\0")[:-1]
        except OSError:
            argv = []
        command = " ".join(part.decode("utf-8", "replace") for part in argv)[:120]
        named.append(f"pid {pid} ({command}) of user {user_name(owner(pid))}")
    if named:
        return named
    mine = os.getuid()
    owners = [f"another user's process (user {user_name(uid)})" if uid != mine
              else f"a process of user {user_name(uid)} not visible here" for uid in socket_owners(inodes)]
    return owners or ["another user's process"]


def free_ports(low, high, taken, tcp_texts, addr):
    """The ports from low to high that are not in `taken` and that no listener
    in the /proc/net/tcp{,6} texts holds for `addr` (the same address, a
    wildcard, or an IPv4-mapped one: see conflicts), in order."""
    ours = packed(addr)
    held = {port for text in tcp_texts for port, _, hex_addr in listening_sockets(text)
            if low <= port <= high and conflicts(listen_address(hex_addr), ours)}
    return [port for port in range(low, high + 1) if port not in taken and port not in held]


def choose_port(low, high, taken, tcp_texts, addr):
    """The first of free_ports; None when there is none."""
    ports = free_ports(low, high, taken, tcp_texts, addr)
    return ports[0] if ports else None
