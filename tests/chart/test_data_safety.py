"""The durable store is kept: the chart-created PVC survives uninstall and value changes.

``helm.sh/resource-policy: keep`` makes Helm skip deleting the PVC on
``helm uninstall`` and on an upgrade that stops rendering it (persistence
off, Postgres, an existing claim); NOTES.txt says where the data is, how to
back it up, and warns when the store is an emptyDir.
"""

from __future__ import annotations

from tests.chart.conftest import render
from tests.chart.test_docs import _notes as notes

PVC = "rp-resonate-patterns-server-data"


def test_pvc__kept_by_default() -> None:
    pvc = render().get("PersistentVolumeClaim", PVC)
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_pvc__keep_can_be_turned_off() -> None:
    pvc = render(sets=("server.storage.persistence.keepOnUninstall=false",)).get(
        "PersistentVolumeClaim", PVC
    )
    assert "annotations" not in pvc["metadata"]


def test_notes__say_where_the_data_is_and_how_to_back_it_up() -> None:
    text = notes()
    assert "Data: the server's SQLite store is on PVC rp-resonate-patterns-server-data" in text
    assert "kubectl -n demo delete pvc rp-resonate-patterns-server-data" in text
    assert "--replicas=0, copy resonate.db from the volume" in text
    assert "WARNING: the server keeps its SQLite store in an emptyDir" not in text


def test_notes__warn_when_the_store_is_an_emptydir() -> None:
    text = notes("--set", "server.storage.persistence.enabled=false")
    assert "WARNING: the server keeps its SQLite store in an emptyDir" in text
    assert "is lost when the server pod is deleted" in text
    assert "Data: the server's SQLite store" not in text
