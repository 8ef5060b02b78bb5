"""What the multi-service deployment (docker-compose.yml) hands each project container.

The compose file gives every project container its endpoints as ``LAMBDAREC_*`` variables, with
the values interpolated from ``.env`` (``.env.example`` documents them). This module does that
interpolation the way compose does (``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``)
and builds the :class:`~lambdarec.config.Settings` a container would see, from the container's
environment only: neither this process's environment nor a ``.env`` file leaks in. Tests use it
to prove that no project service falls back to a loopback default; docs use
:func:`settings_table` for the table of variables. ``python -m lambdarec.deploy --help``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, SecretStr

from lambdarec.config import REPO_ROOT, Settings

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
#: The operator's env file: .env.example with every secret filled (git-ignored).
ENV_FILE = REPO_ROOT / ".env"
PREFIX = "LAMBDAREC_"

_VARIABLE = re.compile(
    r"\$\$"  # an escaped dollar
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


#: Every secret of the deployment (.env names) with its shortest acceptable length; the
#: ``secrets-check`` service refuses to let the stack start while one is empty, still the
#: ``change-me`` placeholder of .env.example, or shorter. Generators: docs/deployment.md.
SECRETS: dict[str, int] = {
    "KAFKA_CLUSTER_ID": 22,
    "KAFKA_SASL_PASSWORD": 16,
    "REDIS_PASSWORD": 16,
    "POSTGRES_PASSWORD": 16,
    "AIRFLOW_DB_PASSWORD": 16,
    "MLFLOW_DB_PASSWORD": 16,
    "MLFLOW_ADMIN_PASSWORD": 16,
    "MLFLOW_FLASK_SECRET_KEY": 32,
    "MINIO_ROOT_USER": 3,
    "MINIO_ROOT_PASSWORD": 16,
    "MILVUS_ROOT_PASSWORD": 16,
    "AIRFLOW_ADMIN_PASSWORD": 16,
    "AIRFLOW_FERNET_KEY": 44,
    "AIRFLOW_API_SECRET_KEY": 32,
    "AIRFLOW_JWT_SECRET": 32,
}
PLACEHOLDER = "change-me"
_UNQUOTABLE = "\"'\\"


class ComposeError(ValueError):
    """The compose file cannot be rendered (a required variable is missing, a bad entry)."""


class _ContainerSettings(Settings):
    """Settings from the keyword arguments only: no process environment, no ``.env`` file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (comments and blank lines skipped, quotes removed)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise ComposeError(f"{path}:{number}: not KEY=VALUE: {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution in one string."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if missing else str(value)
        if op in (":?", "?"):
            if missing:
                raise ComposeError(f"required variable {name} is missing a value: {arg}")
            return str(value)
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def load_compose(
    env: Mapping[str, str] | None = None,
    *,
    compose_file: Path = COMPOSE_FILE,
    env_file: Path | None = ENV_EXAMPLE,
) -> dict[str, Any]:
    """The compose file with its variables substituted: ``env`` over the env file's values."""
    import yaml

    variables = {**(read_env_file(env_file) if env_file else {}), **(env or {})}
    document = yaml.safe_load(compose_file.read_text())  # merge keys (<<) are resolved here
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise ComposeError(f"{compose_file} has no services")
    rendered = _interpolate_tree(document, variables)
    assert isinstance(rendered, dict)
    return rendered


def service_environment(compose: Mapping[str, Any], service: str) -> dict[str, str]:
    """A service's ``environment`` as a dict (compose allows a mapping or a KEY=VALUE list)."""
    try:
        spec = compose["services"][service]
    except KeyError:
        raise ComposeError(f"no service {service!r} in the compose file") from None
    raw = spec.get("environment") or {}
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def project_services(compose: Mapping[str, Any]) -> list[str]:
    """Services that run project code: those whose environment carries ``LAMBDAREC_*``."""
    return [
        name
        for name in compose["services"]
        if any(key.startswith(PREFIX) for key in service_environment(compose, name))
    ]


def compose_settings(env: Mapping[str, str]) -> Settings:
    """The Settings a container whose environment is ``env`` sees (its ``LAMBDAREC_*`` only)."""
    fields: dict[str, Any] = {
        key.removeprefix(PREFIX).lower(): value
        for key, value in env.items()
        if key.startswith(PREFIX)
    }
    # Fields read under another program's own name (MLflow's MLFLOW_TRACKING_*).
    fields.update({name: env[key] for key, name in _aliased().items() if key in env})
    unknown = sorted(set(fields) - set(Settings.model_fields))
    if unknown:
        names = ", ".join(PREFIX + name.upper() for name in unknown)
        raise ComposeError(f"the compose file sets variables Settings does not know: {names}")
    return _ContainerSettings(**fields)


def _aliased() -> dict[str, str]:
    """Variable name -> field, for the fields read without the LAMBDAREC_ prefix."""
    names = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update({str(choice).upper(): name for choice in alias.choices})
        elif isinstance(alias, str):
            names[alias.upper()] = name
    return names


def env_name(field: str) -> str:
    """The environment variable a Settings field is read from."""
    aliases = {name: key for key, name in _aliased().items()}
    return aliases.get(field, PREFIX + field.upper())


def service_settings(
    env: Mapping[str, str] | None = None,
    *,
    compose_file: Path = COMPOSE_FILE,
    env_file: Path | None = ENV_EXAMPLE,
) -> dict[str, Settings]:
    """The rendered Settings of every project service, keyed by service name."""
    compose = load_compose(env, compose_file=compose_file, env_file=env_file)
    return {
        name: compose_settings(service_environment(compose, name))
        for name in project_services(compose)
    }


#: What a field switches, for the fields whose description in config.py is still empty (move these
#: into the Field descriptions there and this falls away).
_SWITCHES = {
    "kafka_port": "local broker's client port (ignored when KAFKA_BOOTSTRAP is set)",
    "kafka_controller_port": "local broker's KRaft controller port",
    "kafka_heap": "local broker's JVM heap",
    "topic_events": "events topic (producers, Flink source, replay)",
    "topic_dead_letter": "dead-letter topic for invalid events",
    "topic_session_features": "compacted topic of session features (Flink -> pusher)",
    "topic_impressions": "impressions topic (serving logs what it showed)",
    "topic_partitions": "partitions of the project's topics when created",
    "topic_replication": "replication factor of the project's topics (3 on a 3-broker cluster)",
    "redis_host": "Redis host of the Feast online store (with ONLINE_STORE=redis)",
    "redis_port": "Redis port of the Feast online store",
    "mlflow_port": "local MLflow server's port (ignored when MLFLOW_TRACKING_URI is set)",
    "airflow_port": "local Airflow API server/UI port",
    "airflow_parallelism": "Airflow's task parallelism on the local platform",
    "milvus_port": "local Milvus standalone server's port",
    "milvus_etcd_port": "local Milvus server's embedded etcd port",
    "milvus_alias": "collection alias serving reads (switched atomically on a new index)",
    "milvus_index_type": "item index: HNSW (approximate) or FLAT (exact)",
    "milvus_m": "HNSW graph degree M",
    "milvus_ef_construction": "HNSW efConstruction (build quality)",
    "milvus_ef": "HNSW ef at search time (recall vs latency)",
    "milvus_keep": "index versions kept for rollback",
    "serving_port": "the Flask app's port on the local platform",
    "start_timeout_s": "seconds `platform up` waits for a service to turn healthy",
}


def settings_table() -> str:
    """A Markdown table of every ``LAMBDAREC_*`` variable: default and what it switches."""
    rows = ["| variable | default | what it switches |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path) and default.is_relative_to(REPO_ROOT):
            shown = "<repo>/" + str(default.relative_to(REPO_ROOT))
        elif isinstance(default, Path) and default.is_relative_to(REPO_ROOT.parent):
            shown = "<repo>/../" + str(default.relative_to(REPO_ROOT.parent))
        elif isinstance(default, SecretStr):
            shown = "(empty)" if not default.get_secret_value() else "(secret)"
        else:
            shown = "(empty)" if default == "" else str(default)
        description = field.description or _SWITCHES.get(name, "")
        rows.append(f"| `{env_name(name)}` | `{shown}` | {description.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def secret_problems(env: Mapping[str, str], secrets: Mapping[str, int] = SECRETS) -> list[str]:
    """What is wrong with each secret in ``env``, one line per variable (empty: all fine).

    The lines name variables and lengths, never a value."""
    problems = []
    for name, shortest in secrets.items():
        value = env.get(name, "")
        if not value:
            problems.append(f"{name} is empty")
        elif PLACEHOLDER in value.lower():
            problems.append(f"{name} is still the {PLACEHOLDER} placeholder")
        elif len(value) < shortest:
            problems.append(f"{name} is {len(value)} characters, shorter than {shortest}")
        elif any(char in value for char in _UNQUOTABLE) or any(c.isspace() for c in value):
            # Kafka's JAAS line and Redis's config file quote the value: these would break it.
            problems.append(f"{name} holds a quote, a backslash or a space")
    return problems


def generate_secrets() -> dict[str, str]:
    """A fresh value for every secret, each of the form its consumer expects (the generators
    .env.example names): what ``init-env`` writes into a new .env."""
    import base64
    import secrets
    import uuid

    values = {name: secrets.token_hex(32) for name in SECRETS}
    values["KAFKA_CLUSTER_ID"] = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    # A Fernet key is 32 random bytes in urlsafe base64 (cryptography's Fernet.generate_key()).
    values["AIRFLOW_FERNET_KEY"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    values["MINIO_ROOT_USER"] = "lambdarec"
    return values


def init_env(target: Path = ENV_FILE, template: Path = ENV_EXAMPLE) -> list[str]:
    """Write ``target`` from ``template`` with every empty secret generated; the other lines
    (comments, endpoints, sizes) stay as they are. Refuses to overwrite an existing file.
    Returns the names it generated."""
    if target.exists():
        raise ComposeError(f"{target} exists: remove it first, or edit its secrets by hand")
    fresh = generate_secrets()
    lines, generated = [], []
    for line in template.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key in fresh and not value.strip():
            line = f"{key}={fresh[key]}"
            generated.append(key)
        lines.append(line)
    old = os.umask(0o077)
    try:
        target.write_text("\n".join(lines) + "\n")
    finally:
        os.umask(old)
    return generated


def check_secrets(env: Mapping[str, str], secrets: Mapping[str, int] = SECRETS) -> None:
    """Raise one :class:`ComposeError` naming every secret that is empty, a placeholder or short."""
    problems = secret_problems(env, secrets)
    if problems:
        raise ComposeError(
            "refusing to start: replace these secrets in .env (docs/deployment.md, "
            "'Credentials', gives a generator for each):\n  " + "\n  ".join(problems)
        )


#: The Airflow UI/API administrator the deployment creates (FabAuthManager, users in PostgreSQL).
AIRFLOW_ADMIN = "admin"


def airflow_admin(password: str, username: str = AIRFLOW_ADMIN) -> str:
    """Create the Airflow admin with ``password``, or reset its password: what ``airflow-init``
    runs after ``airflow db migrate`` with the FAB auth manager, so that changing
    ``AIRFLOW_ADMIN_PASSWORD`` in .env and restarting rotates it. The password is read from the
    environment by the caller, never from a command line (``ps`` would show it)."""
    problems = secret_problems({"AIRFLOW_ADMIN_PASSWORD": password}, {"AIRFLOW_ADMIN_PASSWORD": 16})
    if problems:
        raise ComposeError(problems[0])
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        security = appbuilder.sm
        user = security.find_user(username=username)
        if user is None:
            role = security.find_role("Admin")
            if role is None:
                raise ComposeError("Airflow has no Admin role: run `airflow db migrate` first")
            if not security.add_user(
                username, "Airflow", "Admin", f"{username}@localhost", role, password
            ):
                raise ComposeError(f"Airflow refused to create the user {username}")
            return f"created the Airflow user {username} (role Admin)"
        if not security.reset_password(user.id, password):
            raise ComposeError(f"Airflow refused to set the password of {username}")
        return f"set the password of the Airflow user {username}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lambdarec.deploy",
        description="Render what docker-compose.yml hands the project containers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("table", help="Print the Markdown table of LAMBDAREC_* variables.")
    show = sub.add_parser("settings", help="Print each project service's endpoints.")
    show.add_argument(
        "--env-file",
        type=Path,
        default=ENV_FILE,
        help="The env file compose reads (default: .env; .env.example leaves the secrets empty).",
    )
    check = sub.add_parser(
        "check-secrets",
        help="Refuse empty, placeholder (change-me) or short secrets; the deployment's "
        "secrets-check service runs it before any backend starts.",
    )
    check.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="Check this env file instead of the process environment (e.g. .env before `up`).",
    )
    init = sub.add_parser(
        "init-env",
        help="Write .env from .env.example with a fresh value for every empty secret "
        "(mode 600; refuses to overwrite).",
    )
    init.add_argument("--output", type=Path, default=ENV_FILE)
    sub.add_parser(
        "airflow-admin",
        help="Create the Airflow admin user, or reset its password, from AIRFLOW_ADMIN_PASSWORD "
        "(FAB auth manager; the deployment's airflow-init runs it after `airflow db migrate`).",
    )
    args = parser.parse_args(argv)
    if args.command == "init-env":
        try:
            generated = init_env(args.output)
        except ComposeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"wrote {args.output}: {len(generated)} secrets generated (keep it out of git)")
        return 0
    if args.command == "airflow-admin":
        try:
            print(airflow_admin(os.environ.get("AIRFLOW_ADMIN_PASSWORD", "")))
        except ComposeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    if args.command == "table":
        sys.stdout.write(settings_table())
        return 0
    if args.command == "check-secrets":
        try:
            check_secrets(read_env_file(args.env_file) if args.env_file else os.environ)
        except ComposeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"secrets-check: all {len(SECRETS)} secrets are set")
        return 0
    if not args.env_file.is_file():
        print(
            f"error: no env file {args.env_file}: `cp .env.example .env` and fill its secrets "
            "(docs/deployment.md, 'Credentials')",
            file=sys.stderr,
        )
        return 1
    try:
        rendered = service_settings(env_file=args.env_file)
    except ComposeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, settings in rendered.items():
        print(
            f"{name}: kafka={settings.bootstrap_servers} redis={settings.redis_host}:"
            f"{settings.redis_port} online={settings.online_store} mlflow={settings.mlflow_uri} "
            f"milvus={settings.milvus_uri} spark={settings.spark_master}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
