"""Fabric's floor: the cheapest task there is, one `true` on each -H host.

`fab -H host noop` costs what any Fabric task costs before it does real work:
interpreter start, imports, loading a fabfile, SSH connect, key exchange,
authentication, one command. fabserve's tasks are measured against it.
"""

from fabric import task


@task
def noop(c):
    """Run `true` on the host (stdin not forwarded, as fabserve does)."""
    c.run("true", hide=True, in_stream=False)
