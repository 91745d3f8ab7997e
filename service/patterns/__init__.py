"""The durable functions (one module per family) and the registry that names them.

Pure workflow code on resonate-sdk's context API: no transport, no process
management. Each family module defines its function names once (``FACTORIAL``,
``ENRICH_ONE``, ...) next to the functions and their input checks;
:mod:`service.patterns.registry` registers them all on a worker.
"""
