"""``serve --workers``: the process group (supervisor and workers sharing one xDS port)."""
