"""``invoke`` reports a rejection only when the store agrees (issue [8], D2), and a
refused create at once (D6).

resonate-sdk 0.8.1 settles a waiting handle with a made-up rejection
("Awaited promise not found") when one listener registration is answered
404 -- which a server coming back from an outage can answer for a moment.
A call whose promise is still pending must go on waiting, not fail.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from resonate.error import ApplicationError, ServerError

from service.client import RejectedError, invoke
from service.config import load_settings
from service.errors import CallRefusedError, ServerFailedError
from service.patterns.registry import pattern


class _Handle:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    async def result(self) -> Any:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class _Promises:
    def __init__(self, states: list[str]) -> None:
        self.states = states

    async def create(self, *_: Any) -> Any:
        return SimpleNamespace(state="pending", value=SimpleNamespace(data=None))

    async def get(self, _id: str) -> Any:
        return SimpleNamespace(state=self.states.pop(0), value=SimpleNamespace(data=None))


def _runtime(outcomes: list[Any], states: list[str]) -> Any:
    handles = [_Handle(o) for o in outcomes]

    async def get(_pid: str) -> _Handle:
        return handles.pop(0)

    async def opened() -> None:
        return None

    return SimpleNamespace(
        settings=load_settings({}),
        opened=opened,
        resonate=SimpleNamespace(promises=_Promises(states), get=get),
        telemetry=SimpleNamespace(metrics=SimpleNamespace(cache_result=lambda *a, **k: None)),
    )


async def test_invoke__made_up_rejection_while_promise_pending__waits_again_and_returns() -> None:
    gone = ApplicationError("Awaited promise not found")
    runtime = _runtime([gone, 720], ["pending"])
    result = await invoke(runtime, pattern("factorial"), (6,))
    assert result.result == 720


async def test_invoke__rejection_the_store_confirms__reported() -> None:
    failed = ApplicationError("boom")
    runtime = _runtime([failed], ["rejected"])
    with pytest.raises(RejectedError, match="boom"):
        await invoke(runtime, pattern("factorial"), (6,))


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (400, CallRefusedError, "refused to store 'factorial-6' (400): id too long"),
        (503, ServerFailedError, "failed to store 'factorial-6' (503): id too long"),
    ],
)
async def test_invoke__create_answered_with_an_error__fails_at_once_naming_it(
    status: int, error: type[Exception], message: str
) -> None:
    runtime = _runtime([], [])

    async def refusing(*_: Any) -> Any:
        raise ServerError(status, "id too long")

    runtime.resonate.promises.create = refusing
    with pytest.raises(error, match=re.escape(message)):
        await invoke(runtime, pattern("factorial"), (6,), wait_seconds=600)
