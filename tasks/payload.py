"""The agent as one payload: what the command that runs it carries.

The agent package's modules (agent.MODULES) travel as one word: their sources,
comments and docstrings blanked (line numbers kept, so tracebacks still point
at the right lines), joined as `name NUL source NUL ...`, compressed and in
base64. On the target the loader compiles them into a dict of code objects,
caches that dict per interpreter, and serves the package `fabserve_agent` from
it through a meta-path finder (agent.boot): one SSH command, nothing written
but the cache, no temporary directory.
"""

import base64
import hashlib
import os
import stat
import threading
import zlib
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

from .agent import MODULES

PACKAGE_DIR = Path(__file__).with_name("agent")
# Runs first on the target, with the agent's hash and modules as arguments. It
# refuses old interpreters in words (it must itself compile under Python 2), and
# keeps the compiled modules in ~/.cache/fabserve, keyed by their hash and the
# interpreter, so later calls skip compiling them (a fifth of the agent's run time).
# The cache is trusted only while it is the user's own directory that no one else
# can write; a new entry replaces older versions' entries for the same interpreter.
LOADER = """\
import sys
sys.path = [entry for entry in sys.path if entry]  # not the login directory: no stray json.py
if sys.version_info < (3, 6):
    sys.exit('fabserve: the target needs Python 3.6 or newer, not ' + sys.version.split()[0])
import binascii, marshal, os, stat, zlib
tag = sys.implementation.cache_tag
folder = os.path.join(os.path.expanduser('~'), '.cache', 'fabserve')
cache = os.path.join(folder, 'agent-%s-%s' % (sys.argv[1], tag))
def private(path):  # code is loaded only from our own directory that no one else can write
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022
try:
    if not private(folder):
        raise ValueError(folder)
    with os.fdopen(os.open(cache, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), 'rb') as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # a FIFO would block the read for ever
            raise ValueError(cache)
        codes = marshal.load(handle)
    if not isinstance(codes, dict) or codes['boot'].co_filename != 'fabserve_agent/boot.py':
        raise ValueError(cache)
except Exception:
    words = zlib.decompress(binascii.a2b_base64(sys.argv[2])).decode('utf-8').split('\\0')
    codes = dict((name, compile(source, 'fabserve_agent/%s.py' % name, 'exec', dont_inherit=True))
                 for name, source in zip(words[::2], words[1::2]))
    if tag:
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if private(folder):
                with open(cache + '.%d' % os.getpid(), 'wb') as handle:
                    marshal.dump(codes, handle)
                os.replace(cache + '.%d' % os.getpid(), cache)
                for name in os.listdir(folder):  # older versions' entries
                    if name.startswith('agent-') and name.endswith('-' + tag) and name != os.path.basename(cache):
                        os.remove(os.path.join(folder, name))
        except OSError:
            pass
boot = {}
exec(codes['boot'], boot)
boot['install'](codes)
from fabserve_agent.dispatch import main
sys.exit(main())
"""
# The -c program: one line with nothing any login shell treats specially inside
# single quotes (csh and tcsh reject a newline there and expand `!` even there).
# The loader travels compressed as the last argument and takes itself off argv,
# so the loader reads the arguments it always had. The request is no argument: it
# goes on the agent's stdin (see remote.request_line).
# It must run under Python 2 as well, for the loader to refuse it in words. Its
# comment names the agent's processes in ps and /proc/PID/cmdline.
BOOTSTRAP = ("import sys,binascii,zlib;exec(zlib.decompress(binascii.a2b_base64(sys.argv.pop())))"
             "  # fabserve-agent")
LOADER_WORD = base64.b64encode(zlib.compress(LOADER.encode("ascii"), 9)).decode("ascii")


def blanked(source: str) -> str:
    """`source` without its comments and docstrings, every line where it was:
    what the target needs of it, in fewer bytes (tracebacks keep their line numbers)."""
    import ast  # here: a client that reads the kept word (see built) never blanks, nor imports these
    import io
    import tokenize
    lines = source.splitlines(keepends=True)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col].rstrip() + "\n"
    lines = [line.encode("utf-8") for line in lines]  # ast's columns count bytes
    for node in ast.walk(ast.parse("".join(line.decode("utf-8") for line in lines))):
        body = getattr(node, "body", None)
        if not (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            continue
        doc = body[0]
        first, last = doc.lineno - 1, doc.end_lineno - 1
        # `0` keeps the statement, so a body that was only its docstring is still a body.
        lines[first] = lines[first][:doc.col_offset] + b"0" + lines[last][doc.end_col_offset:]
        for row in range(first + 1, last + 1):
            lines[row] = b"\n"
    return b"".join(lines).decode("utf-8")


# Blanking the modules (tokenize and ast) takes a client about 150 ms, more than
# the agent's whole run on the host: the word is built once per version of the
# sources and kept in the user's cache directory (never in the package, which an
# installed copy must leave as it was installed).
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")) / "fabserve"
CACHE_PREFIX = "payload-"
#: How many versions' words are kept, the newest: a checkout and an installed copy, or
#: several worktrees, used in turn would otherwise each delete the other's and rebuild it.
CACHE_KEEP = 4
# The first of several hosts' threads builds the word; the others wait for it.
BUILDING = threading.Lock()


def payload() -> Tuple[str, str]:
    """The agent's hash and its modules as one compressed word, as command arguments."""
    with BUILDING:
        return built()


@lru_cache(maxsize=1)
def built() -> Tuple[str, str]:
    sources = [(name, (PACKAGE_DIR / f"{name}.py").read_bytes()) for name in MODULES]
    key = sources_key(sources)
    cached = read_cached(CACHE_DIR / f"{CACHE_PREFIX}{key}")
    if cached is not None:
        return cached
    parts = []
    for name, source in sources:
        parts += [name, blanked(source.decode("utf-8"))]
    joined = "\0".join(parts).encode("utf-8")
    word = (hashlib.sha256(joined).hexdigest()[:16], base64.b64encode(zlib.compress(joined, 9)).decode("ascii"))
    write_cached(CACHE_DIR, f"{CACHE_PREFIX}{key}", word)
    return word


def sources_key(sources: List[Tuple[str, bytes]]) -> str:
    """What the word is built from: the modules and this module (how it blanks them)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for name, source in sources:
        digest.update(b"\0" + name.encode("ascii") + b"\0" + source)
    return digest.hexdigest()[:32]


def trusted(info: os.stat_result) -> bool:
    """Whether a file or directory is this user's and no one else can write it:
    the word kept there is run on every host."""
    return info.st_uid == os.geteuid() and not info.st_mode & 0o022


def trusted_dir(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and trusted(info)


def read_cached(path: Path) -> Optional[Tuple[str, str]]:
    """The (hash, word) kept at `path` if it is whole and matches its hash, else None."""
    if not trusted_dir(path.parent):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not (stat.S_ISREG(info.st_mode) and trusted(info)):
                return None
            digest, _, word = handle.read().decode("ascii").partition(" ")
        joined = zlib.decompress(base64.b64decode(word, validate=True))
    except (OSError, ValueError, zlib.error):  # ValueError: bad base64 or ASCII too
        return None
    return (digest, word) if hashlib.sha256(joined).hexdigest()[:16] == digest else None


def write_cached(folder: Path, name: str, word: Tuple[str, str]) -> None:
    """Keep `word` as folder/name, and the CACHE_KEEP newest versions' entries
    in all; nothing happens where the folder cannot be written."""
    temporary = folder / f"{name}.{os.getpid()}.{threading.get_ident()}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not trusted_dir(folder):
            return
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as handle:
            handle.write(" ".join(word))
        os.replace(temporary, folder / name)
        entries = [(entry.lstat().st_mtime_ns, entry) for entry in folder.iterdir()
                   if entry.name.startswith(CACHE_PREFIX) and entry.name != name]
        for _, entry in sorted(entries, reverse=True)[CACHE_KEEP - 1:]:
            entry.unlink(missing_ok=True)
    except OSError:
        temporary.unlink(missing_ok=True)
