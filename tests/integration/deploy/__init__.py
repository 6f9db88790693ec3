"""Packaging and deployment: the wheel, the image's install, docker-compose.yml and the
Kubernetes pods, run as far as they can be without Docker or a cluster."""
