"""The speed-layer operator: submit the Flink job, wait until it runs, cancel it on kill.

The target comes from the ``flink_default`` connection: host ``local`` runs the job on the local
mini-cluster (the platform's ``speed-layer`` service, started and stopped by
:mod:`lambdarec.platform.speed_control`), a JobManager REST host and port submits it to that Flink
session cluster with ``flink run`` (the same job file). The logic lives in
:mod:`lambdarec.speed.control`; the operator wires it to Airflow and picks the launcher for the
target (the core never imports the local platform; a plugin may).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class SpeedLayerOperator(BaseOperator):
    """Keep the speed-layer job running: submit it when it is not, wait until every task runs.

    ``watch_s`` > 0 keeps the task alive that long afterwards, checking the job every
    ``poll_s`` and failing if it stops (a retry then resubmits; the job resumes from its last
    checkpoint). Killing the task (``on_kill``) cancels the job.
    """

    template_fields = ("conn_id",)
    ui_color = "#e6f1f2"

    def __init__(
        self,
        *,
        conn_id: str = "flink_default",
        start_timeout_s: float = 300.0,
        watch_s: float = 0.0,
        poll_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.start_timeout_s = start_timeout_s
        self.watch_s = watch_s
        self.poll_s = poll_s
        self._job_id: str | None = None

    def target(self) -> Any:
        from airflow.sdk import BaseHook

        from lambdarec.speed.control import Target

        conn = BaseHook.get_connection(self.conn_id)
        address = f"{conn.host}:{conn.port}" if conn.port else (conn.host or "")
        return Target.parse(address)

    def execute(self, context: Context) -> dict[str, Any]:
        from lambdarec.config import get_settings
        from lambdarec.speed.control import SpeedLayerError, ensure_running, submit
        from lambdarec.speed.job import find_job

        settings = get_settings()
        target = self.target()
        if target.local:
            from lambdarec.platform.speed_control import start_local

            start = functools.partial(start_local, settings, self.start_timeout_s)
        else:
            start = functools.partial(submit, settings, target)
        info = ensure_running(settings, target, self.start_timeout_s, start=start)
        self._job_id = info.job_id
        self.log.info(
            "speed layer %s job %s on %s (%s)",
            "submitted" if info.submitted else "already running",
            info.job_id,
            target.jobmanager,
            info.rest_url,
        )
        until = time.monotonic() + self.watch_s
        while time.monotonic() < until:
            time.sleep(self.poll_s)
            job = find_job(info.rest_url)
            if job is None or job.get("state") != "RUNNING":
                raise SpeedLayerError(
                    f"the speed layer stopped while watched: {job and job.get('state')}"
                )
        return info.as_dict()

    def on_kill(self) -> None:
        from lambdarec.config import get_settings
        from lambdarec.speed.control import cancel

        settings = get_settings()
        target = self.target()
        if target.local:
            from lambdarec.platform.speed_control import stop_local

            cancelled = stop_local(settings)
        else:
            cancelled = cancel(settings, target, self._job_id)
        self.log.info("speed layer %s", "cancelled" if cancelled else "was not running")
