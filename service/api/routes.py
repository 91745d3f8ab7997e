"""The API's handlers, bound to one worker's runtime, and what each outcome answers.

The statuses and bodies are those of the table in :mod:`service.api`;
requests are parsed by :mod:`service.api.requests` before anything here runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from aiohttp import ClientError, web
from resonate.error import ConnectorError, ServerError

from service.api.openapi import openapi_document
from service.api.requests import (
    MAX_ID_CHARS,
    PREFIX,
    ApiError,
    location_of,
    parse_invocation,
    parse_timeout,
    prepare,
    read_body,
)
from service.client import RejectedError, WaitTimeoutError, submit
from service.errors import (
    AuthRefusedError,
    ServerFailedError,
    ServerUnavailableError,
    UsageError,
)
from service.inspect import store
from service.patterns.registry import pattern
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from service.client import CallResult
    from service.patterns.registry import Pattern
    from service.runtime import Runtime

    #: ``describe(runtime, promise_id)``: a promise as a JSON-ready dict, None if absent.
    Describe = Callable[[Runtime, str], Awaitable[dict[str, Any] | None]]

#: Longest ``GET /v1/promises/{id}`` waits for the Resonate server before 503.
DESCRIBE_TIMEOUT_SECONDS = 10.0


class InvocationApi:
    """The API routes of one worker, bound to its runtime.

    A draining worker keeps answering (Kubernetes takes a moment to stop
    routing to a pod that turned unready) and waits for its callers like for
    its executions. :meth:`close`, at the end of the drain, answers the
    requests still waiting with 202 and their ``Location`` and turns new
    invocations away with 503, so a worker never holds a caller past its
    drain: the call itself keeps running on the group.
    """

    def __init__(self, runtime: Runtime, *, describe: Describe | None = None) -> None:
        self.runtime = runtime
        #: Set by :meth:`close`: new invocations get 503.
        self.closed = False
        #: POSTs currently waiting for a result.
        self.in_flight = 0
        self._describe = describe if describe is not None else store.describe
        self._released = asyncio.Event()
        self._log = get_logger("service.api")

    def install(self, app: web.Application) -> None:
        """Add the API's routes (and JSON errors for its paths) to ``app``."""
        app.middlewares.append(_json_errors)
        app.router.add_post(PREFIX + "/patterns/{name}", self.post_pattern)
        app.router.add_get(PREFIX + "/promises/{id:.+}", self.get_promise)
        app.router.add_get("/openapi.json", self.get_openapi)

    async def close(self, grace_seconds: float = 1.0) -> None:
        """Answer every waiting invocation now (202 with its Location); refuse new ones.

        Returns once those answers are written, or after ``grace_seconds``.
        """
        self.closed = True
        self._released.set()
        deadline = asyncio.get_running_loop().time() + grace_seconds
        # Each waiting handler answers on its next turn of the loop; no event tells when.
        while self.in_flight and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def get_openapi(self, _: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.runtime))

    async def post_pattern(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            target = pattern(name)
        except UsageError as exc:
            return ApiError(404, str(exc)).response()
        try:
            wait = parse_timeout(_one_query(request, "timeout"))
            call = parse_invocation(await read_body(request))
            promise_id = prepare(target, self.runtime.settings, call)
            if self.closed:
                raise ApiError(503, "this worker is shutting down; retry (another one answers)")
        except ApiError as exc:
            self._log.info("api_refused", pattern=name, status=exc.status, error=exc.message)
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            return exc.response(headers)
        self.in_flight += 1
        try:
            return await self._invoke(target, call.args, promise_id, wait)
        finally:
            self.in_flight -= 1

    async def _invoke(
        self, target: Pattern, args: tuple[Any, ...], promise_id: str, wait: float
    ) -> web.Response:
        log = self._log.bind(pattern=target.name, promise_id=promise_id)
        try:
            result = await self._wait(
                submit(self.runtime, target, args, promise_id, wait_seconds=wait)
            )
        except WaitTimeoutError:
            result = None
        except RejectedError as exc:
            log.info("api_call", status=422)
            return ApiError(422, str(exc), id=promise_id).response()
        except AuthRefusedError as exc:
            log.warning("api_call", status=502, error=str(exc))
            return ApiError(502, str(exc)).response()
        except UsageError as exc:  # CallRefusedError: the server will not store this call
            return ApiError(400, str(exc)).response()
        except ServerError as exc:
            if 400 <= exc.code < 500:
                # Input that passed the pattern's checks but that the server will not store.
                log.info("api_call", status=400, error=exc.message)
                return ApiError(400, f"the Resonate server refused the call: {exc}").response()
            log.warning("api_call", status=503, error=str(exc))
            return _unavailable(exc).response({"Retry-After": "1"})
        except (
            ConnectorError,
            ClientError,
            OSError,
            ServerUnavailableError,
            ServerFailedError,
        ) as exc:
            log.warning("api_call", status=503, error=str(exc) or type(exc).__name__)
            return _unavailable(exc).response({"Retry-After": "1"})
        if result is None:
            location = location_of(promise_id)
            log.info("api_call", status=202, wait_seconds=wait)
            return web.json_response(
                {"id": promise_id, "location": location},
                status=202,
                headers={"Location": location},
            )
        log.info("api_call", status=200, cached=result.cached, elapsed_ms=result.elapsed_ms)
        return web.json_response(result.as_dict())

    async def _wait(self, call: Awaitable[CallResult]) -> CallResult | None:
        """``call``'s result, or None when :meth:`close` comes first (call cancelled)."""
        task = asyncio.ensure_future(call)
        released = asyncio.ensure_future(self._released.wait())
        try:
            await asyncio.wait({task, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return None if task.cancelled() else task.result()

    async def get_promise(self, request: web.Request) -> web.Response:
        promise_id = request.match_info["id"]
        missing = ApiError(404, f"no promise {promise_id!r}")
        # Ids no promise can have: not worth a round trip to the server.
        if len(promise_id) > 4 * MAX_ID_CHARS or "\0" in promise_id:
            return missing.response()
        try:
            # A started runtime retries a server that is down; answer 503 instead of hanging.
            async with asyncio.timeout(DESCRIBE_TIMEOUT_SECONDS):
                found = await self._describe(self.runtime, promise_id)
        except TimeoutError:
            msg = f"no answer within {DESCRIBE_TIMEOUT_SECONDS:g} s"
            return _unavailable(TimeoutError(msg)).response({"Retry-After": "1"})
        except AuthRefusedError as exc:
            return ApiError(502, str(exc)).response()
        except ServerError as exc:
            if exc.code in (401, 403):
                refused = AuthRefusedError(exc.code, exc.message, promise_id)
                return ApiError(502, str(refused)).response()
            if 400 <= exc.code < 500:
                # The server refuses to look the id up: no promise has it.
                return missing.response()
            return _unavailable(exc).response({"Retry-After": "1"})
        except (ConnectorError, ClientError, OSError) as exc:
            return _unavailable(exc).response({"Retry-After": "1"})
        if found is None:
            return missing.response()
        return web.json_response(found)


def _unavailable(exc: BaseException) -> ApiError:
    reason = str(exc) or type(exc).__name__
    return ApiError(503, f"the Resonate server is unavailable: {reason}")


def _one_query(request: web.Request, key: str) -> str | None:
    values = request.query.getall(key, [])
    if len(values) > 1:
        raise ApiError(400, f"{key} given {len(values)} times; give it once")
    return values[0] if values else None


_JSON_ERROR_PATHS = (PREFIX + "/", "/openapi.json")


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """On the API's paths, routing errors (404, 405) and crashes answer JSON, never a trace."""
    if not request.path.startswith(_JSON_ERROR_PATHS):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        get_logger("service.api").exception("api_error", path=request.path, error=str(exc))
        return web.json_response({"error": "internal error (logged by the worker)"}, status=500)
