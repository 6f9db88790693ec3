"""The process group of ``serve --workers N``: a supervisor, N worker processes each running
``app.serve`` on one shared xDS port, and the group's admin service on the public admin address.

Only the CLI and this package import it (an import-linter contract).
"""
