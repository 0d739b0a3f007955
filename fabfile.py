"""Entry point for `fab` in the checkout: the tasks live in the tasks package, and
the checkout's inventory/hosts.yml and example/ project are their defaults."""

from tasks import build
from tasks.program import adopt

ns = build(checkout=True)
# The `fab` loading this file answers usage errors and --help as the `fabserve` command does.
adopt()
