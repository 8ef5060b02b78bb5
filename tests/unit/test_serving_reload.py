"""Hot reload: when weekly_model_retraining writes the reload marker, the recommender loads the
new champion's query tower in the background and swaps it in while requests keep flowing."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.harness.platform import private_settings
from lambdarec.harness.waiting import eventually
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.types import Query
from serving.recommender import Recommender

if TYPE_CHECKING:
    from pathlib import Path


class Tower:
    """A query tower that says which version it is (the vector's value)."""

    def __init__(self, version: int) -> None:
        self.version = version

    def encode(self, features: dict[str, Any]) -> np.ndarray:
        return np.full(4, float(self.version), dtype=np.float32)


def _touch(marker: Path, n: int) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f'{{"reload": true, "n": {n}}}')
    os.utime(marker, (time.time() + n, time.time() + n))  # a distinct mtime per write


def test_a_new_champion_is_swapped_in_without_dropping_requests(tmp_path: Path) -> None:
    settings = private_settings(tmp_path)
    rec = Recommender(
        Snapshot.from_items(
            {f"i{n}": "c1" for n in range(30)}, [(f"i{n}", 1.0 / (n + 1)) for n in range(30)]
        )
    )
    loads: list[int] = []
    attempts: list[int] = []

    def loader(_: object) -> Tower:
        attempts.append(1)
        if len(loads) == 2:
            raise RuntimeError("artifact store unreachable")
        loads.append(len(loads) + 1)
        return Tower(loads[-1])

    served: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        query = Query("u1", "s1", 10)
        while not stop.is_set():
            try:
                served.append(len(rec.recommend(query).items))
            except BaseException as exc:  # noqa: BLE001 - any failure is what the test looks for
                errors.append(exc)

    rec.watch_reload(settings, every_s=0.02, loader=loader)
    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        assert rec.encoder is None
        _touch(settings.reload_marker, 1)
        eventually(lambda: rec.reloads == 1, 10, interval_s=0.01, message="the first champion")
        assert isinstance(rec.encoder, Tower) and rec.encoder.version == 1
        _touch(settings.reload_marker, 2)
        eventually(lambda: rec.reloads == 2, 10, interval_s=0.01, message="the second champion")
        assert isinstance(rec.encoder, Tower) and rec.encoder.version == 2
        _touch(settings.reload_marker, 3)  # this load fails: the current tower stays
        eventually(lambda: len(attempts) == 3, 10, interval_s=0.01, message="the failing load")
        assert rec.reloads == 2 and rec.encoder.version == 2
    finally:
        stop.set()
        worker.join(timeout=10)
        rec.close()
    assert not errors, errors[:3]
    assert served and all(n == 10 for n in served), "every request during the swaps got 10 items"
