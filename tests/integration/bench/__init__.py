"""The benchmarks and the C simulated fleet at tiny sizes, so they cannot rot."""
