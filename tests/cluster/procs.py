"""Process helpers shared by the control plane fixture, the pod bridge and the cluster tests.

(Free ports come from :mod:`tests.ports`, as for every other test.)
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

#: prctl option: the signal a child gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child, before exec: SIGKILL it when its parent dies, so that nothing is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_logged(
    argv: list[str],
    log: Path,
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    append: bool = False,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr into ``log``, killed if this process dies."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=new_session,
            preexec_fn=die_with_parent,
        )
