"""The checkout's build tools: they write into the repository (ansible/), so they
are no part of the installed fabserve package (tasks/)."""
