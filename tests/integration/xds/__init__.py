"""The xDS port over real gRPC and real Envoys: the protocol (SotW and delta), stream bounds and
hostile clients, admission under a reconnect storm, refusal logging, CSDS, mTLS identity."""
