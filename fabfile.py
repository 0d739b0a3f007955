"""Entry point for `fab`: the tasks live in the tasks package."""

from tasks import ns  # noqa: F401  (fab loads the collection named ns)
