"""The xDS engine: versioned snapshots, the snapshot cache and the gRPC discovery services.

May import Envoy proto modules; never imports ``registry``, ``routing``, ``translate`` or the
pipeline (an import-linter contract in ``make lint``).
"""
