"""The package served from code objects: a meta-path finder that serves
`fabserve_agent` and its modules from a dict of code objects, as the loader on
the target compiled (or read from its cache) what the client sent.

The loader runs this module's code on its own, before the package exists, and
calls install; the TTL watchdog's interpreter does the same with the codes the
agent feeds it (package_codes), so both import the package by name. It imports
nothing of the package at its top for that reason.
"""

import sys
from importlib.machinery import ModuleSpec

PACKAGE = "fabserve_agent"


class CodeFinder(object):
    """Finds and loads `PACKAGE` and `PACKAGE.NAME` from `codes`, a dict of
    code objects by module name ("__init__" for the package itself)."""

    def __init__(self, codes):
        self.codes = codes

    def module_name(self, fullname):
        if fullname == PACKAGE:
            return "__init__"
        prefix, _, name = fullname.rpartition(".")
        return name if prefix == PACKAGE and name != "__init__" and name in self.codes else None

    def find_spec(self, fullname, path=None, target=None):
        name = self.module_name(fullname)
        if name is None:
            return None
        return ModuleSpec(fullname, self, is_package=name == "__init__")

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)

    def get_code(self, fullname):
        return self.codes[self.module_name(fullname)]


def install(codes):
    """Serve the package from `codes` in this interpreter, before any other finder."""
    sys.meta_path.insert(0, CodeFinder(codes))


def package_codes():
    """The package's modules this process has imported, as code objects, name ->
    code, however it loaded them (from the loader's codes, from files, or from
    Ansible's zip): what the TTL watchdog's interpreter is fed, to serve them
    itself. It needs no more: its module (ttl) and what ttl imports are loaded by
    then; and a module the verbs import lazily may not have been shipped (Ansible
    ships what the module imports by name)."""
    from . import MODULES
    package = __name__.rpartition(".")[0]
    codes = {}
    for name in MODULES:
        fullname = package if name == "__init__" else f"{package}.{name}"
        module = sys.modules.get(fullname)
        if module is not None:
            codes[name] = module.__spec__.loader.get_code(fullname)
    return codes
