"""The jars the speed-layer Flink job needs, in ``<state_dir>/flink/lib``.

* Maven Central jars named by ``env/flink/pom.xml`` (Kafka SQL connector, Parquet format, Hadoop
  client classes), copied with ``mvn dependency:copy-dependencies``;
* ``lambdarec-flink-udf.jar``: the Java aggregate of ``include/flink/java``, compiled with the JDK
  against PyFlink's own jars (no Maven build needed).

Both are skipped when current (a hash of the pom and of the Java sources is kept beside them).
``python -m lambdarec.speed.jars`` resolves them and prints the folder.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lambdarec.config import get_settings

if TYPE_CHECKING:
    from lambdarec.config import Settings

log = logging.getLogger(__name__)

UDF_JAR = "lambdarec-flink-udf.jar"


class JarError(RuntimeError):
    """The jars cannot be resolved or built; the message says what to do."""


def flink_venv(settings: Settings) -> Path:
    return settings.home / ".venv-flink"


def flink_python(settings: Settings) -> Path:
    return flink_venv(settings) / "bin" / "python"


def pyflink_lib(settings: Settings) -> Path:
    found = sorted(flink_venv(settings).glob("lib/python3*/site-packages/pyflink/lib"))
    if not found:
        raise JarError(f"no PyFlink in {flink_venv(settings)}; run `make .venv-flink/.installed`")
    return found[0]


def flink_lib_dir(settings: Settings) -> Path:
    return settings.state_dir / "flink" / "lib"


def java_sources(settings: Settings) -> list[Path]:
    return sorted((settings.home / "include" / "flink" / "java").rglob("*.java"))


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _run(cmd: list[str], settings: Settings, what: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "JAVA_HOME": str(settings.java_home), "HOME": str(Path.home())}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise JarError(f"{what} failed ({' '.join(cmd[:3])} ...):\n{tail}")


def resolve_maven_jars(settings: Settings, lib: Path) -> None:
    pom = settings.home / "env" / "flink" / "pom.xml"
    marker = lib / ".pom.sha256"
    digest = _digest([pom])
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarError("mvn not found; run `make system-deps` (apt-get install maven)")
    for old in lib.glob("*.jar"):
        if old.name != UDF_JAR:
            old.unlink()
    log.info("resolving the Flink connector jars into %s", lib)
    _run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ],
        settings,
        "mvn dependency:copy-dependencies",
    )
    marker.write_text(digest + "\n")


def build_udf_jar(settings: Settings, lib: Path) -> Path:
    sources = java_sources(settings)
    jar = lib / UDF_JAR
    marker = lib / ".udf.sha256"
    digest = _digest(sources)
    if jar.is_file() and marker.is_file() and marker.read_text().strip() == digest:
        return jar
    jdk = settings.java_home / "bin"
    if not (jdk / "javac").is_file():
        raise JarError(
            f"no javac in {jdk}; install openjdk-17-jdk-headless or set LAMBDAREC_JAVA_HOME"
        )
    with tempfile.TemporaryDirectory(prefix="lambdarec-udf-") as tmp:
        classes = Path(tmp) / "classes"
        classes.mkdir()
        classpath = f"{pyflink_lib(settings)}/*"
        _run(
            [
                str(jdk / "javac"),
                "--release",
                "11",
                "-encoding",
                "UTF-8",
                "-cp",
                classpath,
                "-d",
                str(classes),
                *map(str, sources),
            ],
            settings,
            "javac",
        )
        staging = Path(tmp) / UDF_JAR
        _run([str(jdk / "jar"), "cf", str(staging), "-C", str(classes), "."], settings, "jar")
        shutil.move(staging, jar)
    marker.write_text(digest + "\n")
    return jar


def ensure_jars(settings: Settings | None = None) -> Path:
    """Resolve and build what the job needs (seconds when current); returns the folder."""
    settings = settings or get_settings()
    lib = flink_lib_dir(settings)
    lib.mkdir(parents=True, exist_ok=True)
    resolve_maven_jars(settings, lib)
    build_udf_jar(settings, lib)
    return lib


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        print(ensure_jars())
    except JarError as error:
        print(error, file=sys.stderr)
        sys.exit(1)
