"""The connector: the only code that speaks the Resonate protocol or reaches into resonate-sdk.

Everything here is either a wire-level piece (the pooled HTTP network, the
event-stream source, request envelopes, auth headers, per-origin lease
heartbeats, the drain gate) or a thin seam over SDK internals that have no
public API (:mod:`service.connector.sdk`). resonate-sdk is pinned to an exact
version because of this package; a test reads every import in ``service/``
and fails when SDK internals are used anywhere else, so an SDK upgrade is
reviewed here and nowhere else.
"""
