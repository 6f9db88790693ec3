"""The local demo mesh (``routeplane mesh``) as a user starts and stops it."""
