"""Entry point for `fab` in the checkout: the tasks live in the tasks package, and
the checkout's inventory/hosts.yml and example/ project are their defaults."""

from tasks import build

ns = build(checkout=True)
