"""The agent as a package: its modules are the ones it ships, each runs on the
target's Python 3.6 and imports only the standard library and the modules
before it, and the payload carries them, blanked, with every line where it was."""

import ast
import marshal
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import agent, payload
from tasks.agent import boot

PACKAGE = Path(agent.__file__).parent


def imports_of(name):
    """(the package's modules `name` imports, the other top-level modules it imports)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    ours, others = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1, (name, node.module)
            if node.module:
                ours.add(node.module)
            else:
                ours.update(alias.name for alias in node.names if alias.name != "MODULES")
                if any(alias.name == "MODULES" for alias in node.names):
                    ours.add("__init__")
        elif isinstance(node, ast.ImportFrom):
            others.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            others.update(alias.name.split(".")[0] for alias in node.names)
    return ours, others


def test_the_shipped_modules_are_the_package_files():
    assert sorted(agent.MODULES) == sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert len(set(agent.MODULES)) == len(agent.MODULES)


@pytest.mark.parametrize("name", agent.MODULES)
def test_each_module_parses_as_python_3_6_and_imports_the_stdlib_and_earlier_modules(name):
    source = (PACKAGE / f"{name}.py").read_text()
    ast.parse(source, feature_version=(3, 6))
    ours, others = imports_of(name)
    assert others <= sys.stdlib_module_names, (name, others - sys.stdlib_module_names)
    earlier = set(agent.MODULES[:agent.MODULES.index(name)])
    # boot's own import of MODULES is lazy (inside package_codes): it runs before the package exists.
    allowed = earlier | ({"__init__"} if name == "boot" else set())
    assert ours <= allowed, (name, ours - allowed)


@pytest.mark.parametrize("name", agent.MODULES)
def test_each_module_has_a_docstring_and_stays_small(name):
    source = (PACKAGE / f"{name}.py").read_text()
    assert ast.get_docstring(ast.parse(source)), name
    assert len(source.splitlines()) <= 400, name


def test_only_protocol_of_the_package_is_imported_by_the_client():
    tasks = PACKAGE.parent
    for path in tasks.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and (node.module or "").startswith("agent"):
                assert node.module in ("agent", "agent.protocol"), (path.name, node.module)
                if node.module == "agent":
                    assert {alias.name for alias in node.names} <= {"MODULES", "protocol"}, path.name


@pytest.mark.parametrize("name", agent.MODULES)
def test_blanking_drops_comments_and_docstrings_and_keeps_every_line_and_statement(name):
    source = (PACKAGE / f"{name}.py").read_text()
    blanked = payload.blanked(source)
    assert len(blanked.splitlines()) == len(source.splitlines())
    assert "#" not in "".join(line for line in blanked.splitlines() if line.lstrip().startswith("#"))

    def shape(tree):
        """Every node but docstrings, which become `0`, with its line."""
        return [(type(node).__name__, getattr(node, "lineno", None)) for node in ast.walk(tree)
                if not (isinstance(node, ast.Constant) and isinstance(node.value, (str, int)))]
    assert shape(ast.parse(blanked)) == shape(ast.parse(source))
    assert len(blanked) < len(source)


def test_the_payload_is_smaller_than_the_sources_it_carries():
    digest, word = payload.payload()
    sources = sum(len((PACKAGE / f"{name}.py").read_bytes()) for name in agent.MODULES)
    assert len(digest) == 16 and len(word) < sources / 3


def fed_codes(tmp_path):
    """The file holding the package's modules compiled as the loader compiles them,
    marshalled as the watchdog reads them from its stdin."""
    codes = {name: compile(payload.blanked((PACKAGE / f"{name}.py").read_text()), f"fabserve_agent/{name}.py",
                           "exec", dont_inherit=True) for name in agent.MODULES}
    feed = tmp_path / "codes"
    feed.write_bytes(marshal.dumps(codes))
    return feed


def test_the_finder_serves_the_package_from_code_objects_in_a_fresh_interpreter(tmp_path):
    """What the loader and the watchdog's interpreter do: compile the modules,
    install the finder, import the package by name; nothing is read from files."""
    feed = fed_codes(tmp_path)
    program = ("import marshal,sys;c=marshal.load(open(sys.argv[1],'rb'));g={};exec(c['boot'],g);g['install'](c);"
               "from fabserve_agent import dispatch, protocol, boot;"
               "assert set(boot.package_codes()) == {n for n in c if n == '__init__' or 'fabserve_agent.' + n in sys.modules};"
               "print(protocol.MARKER, dispatch.__spec__.loader.__class__.__name__, dispatch.__package__)")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", program, str(feed)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["@@fabserve@@", "CodeFinder", "fabserve_agent"]


def test_package_codes_of_a_checkout_are_its_imported_modules_compiled():
    from tasks.agent import ttl
    codes = boot.package_codes()
    loaded = {name for name in agent.MODULES
              if f"tasks.agent.{name}" in sys.modules or (name == "__init__" and "tasks.agent" in sys.modules)}
    assert set(codes) == loaded and {"__init__", "boot", "ttl"} <= loaded and ttl.WATCH_POLL
    assert all(code.co_filename.endswith(f"{name}.py") for name, code in codes.items())


def test_status_and_stop_leave_the_manage_module_unloaded(tmp_path):
    """dispatch imports a verb's handler for its verb: `manage` is loaded for manage alone."""
    feed = fed_codes(tmp_path)
    program = ("import marshal,sys;c=marshal.load(open(sys.argv[1],'rb'));g={};exec(c['boot'],g);g['install'](c);"
               "from fabserve_agent import dispatch;dispatch.handler(sys.argv[2]);"
               "print(' '.join(sorted(m for m in sys.modules if m.startswith('fabserve_agent.'))))")
    loaded = {}
    for action in ("status", "stop", "manage"):
        done = subprocess.run([sys.executable, "-I", "-S", "-c", program, str(feed), action], capture_output=True,
                              text=True, cwd=tmp_path, timeout=60)
        assert done.returncode == 0, done.stderr
        loaded[action] = set(done.stdout.split())
    assert "fabserve_agent.manage" not in loaded["status"] | loaded["stop"]
    assert "fabserve_agent.manage" in loaded["manage"]
