"""The local stack: what ``up`` and ``demo`` run on a laptop with no cluster.

* :mod:`service.local.children` — one supervised process: spawn, port report, stop.
* :mod:`service.local.supervisor` — the plan, the refusals up front, and :class:`Stack`.
* :mod:`service.local.autoscale` — the operator's policy over local worker processes.
* :mod:`service.local.up` — ``up``: all of the above in the foreground.
* :mod:`service.local.demo` — ``demo``: a tour of every pattern on a fresh stack.

Each module imports only modules listed above it (``up`` uses the supervisor and
the autoscaler; the autoscaler uses the supervisor), so there is no cycle.
"""
