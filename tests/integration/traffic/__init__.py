"""Traffic splits and tags (issue 26) proven with known answers: real echo replicas that name
their revision, through a real Envoy."""
