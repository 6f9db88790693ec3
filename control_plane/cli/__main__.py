"""``python -m control_plane.cli``: the same as the ``routeplane`` command."""

from control_plane.cli import main

main()
