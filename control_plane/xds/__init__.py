"""The xDS engine: versioned snapshots, the snapshot cache and the gRPC discovery services.

May import Envoy proto modules; never imports ``registry``, ``routing`` or ``translate``.
"""
