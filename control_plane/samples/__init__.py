"""Sample upstreams for the local mesh, tests and benchmarks. Not part of the control plane."""
