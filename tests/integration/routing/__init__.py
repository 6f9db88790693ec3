"""Routing decisions proven end to end: registry rows to requests through real Envoys and real
proxyless gRPC clients."""
