"""The WorkerAutoscaler operator: pure scaling policy apart from Kubernetes and Resonate I/O.

:mod:`~service.operator.policy` holds the scaling math (no I/O);
:mod:`~service.operator.backlog` reads a group's backlog from the Resonate
server; :mod:`~service.operator.kube` and :mod:`~service.operator.peering`
talk to the Kubernetes API; :mod:`~service.operator.handlers` are the thin
kopf handlers, run by :mod:`~service.operator.main`.
"""
