"""Feast, imported without the Prometheus side effect of its import.

Importing ``feast`` imports ``feast.metrics`` (through ``feast.feature_store`` and
``feast.feature_server``), which sets ``PROMETHEUS_MULTIPROCESS_DIR`` and
``PROMETHEUS_MULTIPROC_DIR`` to a new ``/tmp/feast_metrics_*`` directory when they are unset, for
the workers of Feast's own feature server. In a lambdarec process that:

* switches ``prometheus_client`` to multiprocess mode when it is imported after Feast: values are
  then kept per process by metric name and labels, so a new serving app (its own registry) starts
  from the counts of an older one in the same process;
* leaves the directory behind whenever the process ends without running ``atexit`` (Airflow's
  task processes end with ``os._exit``; a killed worker);
* hands both variables to every child process, which keeps using the directory after the process
  that made it has removed it.

lambdarec never starts Feast's metrics server (its metrics stay off and record nothing), so
:func:`import_feast` imports ``prometheus_client`` first (its mode is decided by the variables as
the caller set them), then Feast, then takes back what Feast added: each variable that was unset,
and the directory it made. A variable the caller had set is kept. Call it before any ``feast``
import in lambdarec.
"""

from __future__ import annotations

import os
import shutil
import threading

#: The variable naming the directory Feast makes; it sets ``PROMETHEUS_MULTIPROC_DIR`` to it too.
_DIR = "PROMETHEUS_MULTIPROCESS_DIR"
_lock = threading.Lock()
_imported = False


def import_feast() -> None:
    """Import Feast in this process, without its Prometheus variables (once; then a no-op)."""
    global _imported
    if _imported:
        return
    with _lock:
        if _imported:
            return
        import prometheus_client.values  # noqa: F401 - the mode, decided before Feast's variables

        unset = [name for name in (_DIR, "PROMETHEUS_MULTIPROC_DIR") if name not in os.environ]
        import feast.metrics  # noqa: F401 - the import that sets them

        if _DIR in unset and _DIR in os.environ:
            shutil.rmtree(os.environ[_DIR], ignore_errors=True)
        for name in unset:
            os.environ.pop(name, None)
        _imported = True
