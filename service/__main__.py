"""``python -m service`` is the same CLI as the ``resonate-patterns`` script."""

from __future__ import annotations

from service.cli import main

raise SystemExit(main())
