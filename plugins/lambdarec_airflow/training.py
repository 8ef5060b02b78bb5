"""The operator that launches one step of the model retraining as its own program.

:class:`ModelStepOperator` extends the standard provider's BashOperator: at execute time it builds
``<python> include/models/retrain.py <step> --run-dir <run_dir> [--option value ...]`` from the
core settings (the project's home and the worker's interpreter), so TensorFlow, MLflow and
pymilvus run in a child process, never at DAG parse time nor in the worker itself. The step's
last stdout line (its JSON summary) is the task's XCom; exit code 99 skips the task (a step with
nothing to do, e.g. no promoted model to export); ``on_kill`` (BashOperator's) ends the child.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.bash import BashOperator

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow.sdk import Context

#: The retraining program, relative to the project's home.
PROGRAM = "include/models/retrain.py"


class ModelStepOperator(BashOperator):
    """Run ``retrain.py <step>`` on ``run_dir`` (templated) with ``options`` (templated): each
    option is ``--key value``, a boolean ``--key`` / ``--no-key``; None or "" is left out."""

    template_fields: Sequence[str] = (*BashOperator.template_fields, "run_dir", "options")

    def __init__(
        self,
        *,
        step: str,
        run_dir: str,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # The command is built in execute(); the provider requires a value here.
        kwargs.setdefault("append_env", True)
        super().__init__(bash_command="true", **kwargs)
        self.step = step
        self.run_dir = run_dir
        self.options = dict(options or {})

    def resolved_run_dir(self, state_dir: str) -> str:
        """An absolute ``run_dir`` as given; else a folder under ``<state_dir>/models/runs/``
        named after it (a run id holds ``:`` and ``+``, which stay out of the path)."""
        if self.run_dir.startswith("/"):
            return self.run_dir
        return f"{state_dir}/models/runs/{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.run_dir)}"

    def command(self, python: str, home: str, run_dir: str) -> str:
        args = [python, f"{home}/{PROGRAM}", self.step, "--run-dir", run_dir]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            # a templated boolean arrives rendered as "True" / "False"
            if isinstance(value, str) and value in ("True", "False"):
                value = value == "True"
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + flag[2:])
            elif value is not None and value != "":
                args += [flag, str(value)]
        return " ".join(shlex.quote(a) for a in args)

    def execute(self, context: Context) -> Any:
        import sys

        from lambdarec.config import get_settings

        settings = get_settings()
        run_dir = self.resolved_run_dir(str(settings.state_dir.resolve()))
        self.bash_command = self.command(sys.executable, str(settings.home), run_dir)
        # TFRS needs the legacy Keras in the child as well.
        self.env = {"TF_USE_LEGACY_KERAS": "1", **(self.env or {})}
        self.cwd = self.cwd or str(settings.home)
        self.log.info("retraining step %s: %s", self.step, self.bash_command)
        return super().execute(context)
