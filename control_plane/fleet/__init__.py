"""Fleet-wide load: every control-plane process publishes its own proxies' load totals to the
registry (the only state replicas share) and adds up the other processes' records.

``records`` is pure: a process's totals -> a record's bytes, and the records read -> the
remote sums with the records ignored as problems. ``publish`` is the loop of one process: it
writes its record every report interval (at once on a new wake) and reads the others' records,
through the registry's blocking methods in a thread. The load view (``load/server.py``) merges
the remote sums into its own; under ``serve --workers`` each worker sends its supervisor its own
totals and the remote sums apart, so a sibling's share is never counted twice.

Imports the load totals and bounds, the wire form of totals (``admin/loadwire.py``), the
registry's record and ``Registry`` boundary, and ``metrics``; never a store, the xDS engine,
routing or translate.
"""
