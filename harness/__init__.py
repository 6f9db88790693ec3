"""The real processes that tests and benchmarks both start (routeplane, Envoy, the Spanner
emulator) and what starting them needs (loopback ports, waiting with a deadline). Neither
``tests`` nor ``bench`` owns them, so both may import them; not part of the wheel."""
