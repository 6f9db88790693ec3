"""The process group of ``serve --workers N``, in one room: wrapped around ``app.serve``, the
one process's wiring, which knows nothing of it.

- ``supervisor``: starts the workers, serves the public admin address, stops them all;
- ``worker``: a worker's entry point (``python -m control_plane.group.worker``): ``app.serve``
  on the shared xDS port, with the group's CSDS, following the watcher (``follow``);
- ``watcher``: the host's one registry watch (``python -m control_plane.group.watcher``), handing
  every change to the workers (``handoff``: the messages, pure; ``follow``: a worker's side);
- ``orphan``: how a worker or the watcher learns that the supervisor died;
- ``client``: the one client to the workers (admin API, HTTP, CSDS; one ``WorkerUnavailable``);
- ``admin``: the group's admin API, every worker's answers merged (and the load summed);
- ``csds``: the group's CSDS answer, a worker's own proxies and the others';
- ``cores``: how many workers (``--workers 0``: the cores this process may use from 4 up, else 1).

Only the CLI and this package import it (an import-linter contract).
"""
