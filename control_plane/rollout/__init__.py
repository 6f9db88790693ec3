"""Rollouts (issue 26): a server's traffic moved to a target revision step by step, judged by
the load reports, rolled back when the target fails.

A rollout is a record in the registry (``Registry.start_rollout`` and friends), never a process
that must stay alive: ``rules`` is pure (the record and its JSON body, the split at a step, the
judgement, one decision from the record, the server's traffic and the load); ``driver`` is the
loop each ``serve`` runs (a lone process, or a ``--workers`` supervisor), acting only for the
rollouts whose lease it holds; ``commands`` is what ``servers rollout`` and ``servers
rollback`` do (checks first, then one conditional write).

``rules`` imports the registry's values (``model``, ``spec``, ``errors``, ``validate``) only:
no I/O, no clock (time is an argument). ``driver`` and ``commands`` add the ``Registry``
boundary (blocking, in a thread on the loop), ``metrics`` and asyncio; none imports a store,
the xDS engine, routing, translate or the load view (the driver is handed its rates).
"""
