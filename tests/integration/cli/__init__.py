"""The ``routeplane`` command as a user meets it: errors, hostile arguments, and the insight
commands against a running control plane."""
