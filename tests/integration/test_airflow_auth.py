"""The deployment's Airflow login (#21): the FAB auth manager docker-compose.yml configures, its
tables created by `airflow db migrate`, and the admin that airflow-init creates from
AIRFLOW_ADMIN_PASSWORD, whose password a new value in .env rotates. Real Airflow from the lock,
on a throwaway SQLite metadata database (the deployment's PostgreSQL runs the same code)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from lambdarec.deploy import generate_secrets, load_compose

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

_CHECK = """
import sys
from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
with get_application_builder() as appbuilder:
    for password, expected in ((sys.argv[1], True), (sys.argv[2], False)):
        user = appbuilder.sm.auth_user_db("admin", password, rotate_session_id=False)
        assert (user is not None) is expected, (password[:2], expected)
        if user is not None:
            assert [role.name for role in user.roles] == ["Admin"], user.roles
print("login checked")
"""


def _airflow_env(home: Path, auth_manager: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__AUTH_MANAGER=auth_manager,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
    )
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, env=env, cwd=env["AIRFLOW_HOME"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done


def test_the_deployment_admin_logs_in_and_rotates(tmp_path: Path) -> None:
    airflow = load_compose(generate_secrets())["services"]["airflow-api-server"]["environment"]
    auth_manager = airflow["AIRFLOW__CORE__AUTH_MANAGER"]
    assert auth_manager.endswith(".FabAuthManager"), auth_manager
    assert "SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in airflow
    env = _airflow_env(tmp_path, auth_manager)
    airflow_cli = os.path.join(os.path.dirname(sys.executable), "airflow")
    _run([airflow_cli, "db", "migrate"], env)
    admin = [sys.executable, "-m", "lambdarec.deploy", "airflow-admin"]

    first, second = "a" * 20 + "first", "b" * 20 + "second"
    created = _run(admin, {**env, "AIRFLOW_ADMIN_PASSWORD": first})
    assert "created the Airflow user admin" in created.stdout
    assert first not in created.stdout + created.stderr
    _run([sys.executable, "-c", _CHECK, first, second], env)

    rotated = _run(admin, {**env, "AIRFLOW_ADMIN_PASSWORD": second})
    assert "set the password of the Airflow user admin" in rotated.stdout
    _run([sys.executable, "-c", _CHECK, second, first], env)


def test_a_weak_admin_password_is_refused_in_one_line(tmp_path: Path) -> None:
    env = _airflow_env(tmp_path, "unused")
    done = subprocess.run(
        [sys.executable, "-m", "lambdarec.deploy", "airflow-admin"],
        env={**env, "AIRFLOW_ADMIN_PASSWORD": "change-me"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: AIRFLOW_ADMIN_PASSWORD is still the change-me placeholder"
    ), done.stderr
    assert "Traceback" not in done.stderr
