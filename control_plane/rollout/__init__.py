"""Rollouts (issue 26): a server's traffic moved to a target revision step by step, judged by
the load reports, rolled back when the target fails.

A rollout is a record in the registry (``Registry.start_rollout`` and friends), never a process
that must stay alive: ``rules`` is pure (the record and its JSON body, the split at a step, the
judgement, one decision from the record, the server's traffic and the load); ``driver`` is the
loop each ``serve`` runs, acting only for the rollouts whose lease it holds.

``rules`` imports the registry's values (``model``, ``spec``, ``errors``) only: no I/O, no
clock (time is an argument). ``driver`` adds the ``Registry`` boundary, ``metrics`` and
asyncio; neither imports a store, the xDS engine, routing or translate.
"""
