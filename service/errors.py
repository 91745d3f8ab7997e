"""The project's error hierarchy.

Every error this package raises on purpose derives from
:class:`ResonatePatternsError`, so entry points can turn them into one clear
line instead of a traceback. Subclasses carry the fields a caller needs to act.
"""

from __future__ import annotations


class ResonatePatternsError(Exception):
    """Root of every deliberate error raised by resonate-patterns."""


class ConfigError(ResonatePatternsError):
    """A setting read from the environment (or a flag) has an unusable value."""

    def __init__(self, variable: str, value: str, accepted: str) -> None:
        self.variable = variable
        self.value = value
        self.accepted = accepted
        super().__init__(f"{variable}={value!r} is invalid: expected {accepted}")


class InputError(ResonatePatternsError):
    """A pattern was invoked with input it can never accept.

    Raised inside durable functions before any durable operation, so the
    promise is rejected at once with this message and never retried: a
    permanent input error does not get better with time.
    """

    def __init__(self, function: str, message: str) -> None:
        self.function = function
        self.message = message
        super().__init__(f"{function}: {message}")

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str]]:
        # Rejections are pickled into the promise value; keep the two fields.
        return (type(self), (self.function, self.message))


class UsageError(ResonatePatternsError):
    """A CLI invocation that cannot be carried out as written (exit code 2)."""


class StoreBusyError(UsageError):
    """A SQLite store is already open in another process (one owner at a time)."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"the store {path} is in use by another process; share one store through a "
            "server (resonate-patterns up, RESONATE_URL) instead of opening it twice"
        )


class StackRefusedError(UsageError):
    """``up`` refuses to start: what it would need is taken (exit code 2)."""


class StackStartError(ResonatePatternsError):
    """A process of the local stack did not become ready (exit code 1)."""


class ServerUnreachableError(ResonatePatternsError):
    """Nothing accepts connections at the configured Resonate server URL (exit code 1).

    With ``advice`` (``call``, ``demo``: commands that would create work) the
    message names RESONATE_URL and how to fix it; without (``get``, ``ls``:
    reading) it states the fact only.
    """

    def __init__(self, url: str, reason: str, *, advice: bool = True) -> None:
        self.url = url
        self.reason = reason
        if advice:
            msg = (
                f"cannot reach the Resonate server at {url} (RESONATE_URL): {reason}; "
                "start it (resonate-patterns up) or fix RESONATE_URL"
            )
        else:
            msg = f"cannot reach the Resonate server at {url}: {reason}"
        super().__init__(msg)


class EnrichmentError(ResonatePatternsError):
    """One record could not be enriched (a per-child failure in fan-outs)."""

    def __init__(self, record_id: object, reason: str) -> None:
        self.record_id = record_id
        self.reason = reason
        super().__init__(f"cannot enrich {record_id!r}: {reason}")

    def __reduce__(self) -> tuple[type[EnrichmentError], tuple[object, str]]:
        return (type(self), (self.record_id, self.reason))


class FetchError(ResonatePatternsError):
    """A page's links could not be fetched from the link source."""


class AuthRefusedError(ResonatePatternsError):
    """The Resonate server refused this process's token (401) or its scope (403)."""

    def __init__(self, status: int, server_message: str, promise_id: str | None = None) -> None:
        self.status = status
        self.server_message = server_message
        if status == 403:
            scope = f" may not touch {promise_id!r}" if promise_id else " may not do this"
            why = f"the token in RESONATE_TOKEN{scope}: its prefix claim does not cover the id"
        else:
            why = "RESONATE_TOKEN is missing, expired or not signed by the server's auth key"
        super().__init__(
            f"the Resonate server refused the request ({status} {server_message}): {why}"
        )


class ServerUnavailableError(ResonatePatternsError):
    """The Resonate server did not confirm an invocation's create in time."""

    def __init__(self, promise_id: str, seconds: float) -> None:
        self.promise_id = promise_id
        super().__init__(
            f"the Resonate server did not confirm {promise_id} within {seconds:g}s; it may "
            "or may not have started: call again with the same arguments (same id) to "
            "pick it up safely"
        )


class CallRefusedError(UsageError):
    """The Resonate server refused to store an invocation (a 4xx other than auth)."""

    def __init__(self, promise_id: str, status: int, server_message: str) -> None:
        self.promise_id = promise_id
        self.status = status
        super().__init__(
            f"the Resonate server refused to store {promise_id!r} ({status}): {server_message}"
        )


class ServerFailedError(ResonatePatternsError):
    """The Resonate server answered an invocation's create with a server error (5xx)."""

    def __init__(self, promise_id: str, status: int, server_message: str) -> None:
        self.promise_id = promise_id
        self.status = status
        super().__init__(
            f"the Resonate server failed to store {promise_id!r} ({status}): {server_message}; "
            "call again with the same arguments"
        )
