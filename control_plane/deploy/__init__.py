"""Deployment: routeplane on Kubernetes for a user's own topology (``routeplane deploy
kubernetes``), the manifests and the Grafana dashboard. Product: it never imports
``control_plane.dev``; the demo mesh supplies its own topology from there.
"""
