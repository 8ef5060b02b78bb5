"""The model registry: MLflow runs for every training/evaluation, registered versions, and the
``champion`` / ``challenger`` aliases serving follows.

A run records params, metrics, plot files, the feature-service versions and the data range it was
trained on, and the id of the evaluation that produced its metrics (dataset + split). A new model
version becomes ``champion`` only if it beats the current champion's metric *on the same
evaluation*; otherwise it becomes ``challenger`` and the run and the version carry the reason.
Every promotion remembers the champion it replaced, so :meth:`ModelRegistry.rollback` can step back.

Typical use (the training program, not a DAG file)::

    registry = ModelRegistry.from_settings(settings, model_name="two_tower")
    run_id = registry.log_run(
        params={"epochs": 5}, metrics={"ndcg@10": 0.21}, evaluation_id="taobao:temporal-2017-12-01",
        feature_services={"retrieval_v1": "3"}, data_range=("2017-11-25", "2017-12-01"),
        plots=[report_dir / "recall_at_k.png"], model_dir=export_dir,
    )
    version = registry.register(run_id)
    decision = registry.promote(version, {"ndcg@10": 0.21}, metric="ndcg@10")

Integrity: :meth:`ModelRegistry.log_run` logs ``manifest.json`` (every file of the model folder
with its sha256 and size, :mod:`lambdarec.integrity`) beside ``model/`` and keeps the manifest's own
sha256 as a run tag, which :meth:`ModelRegistry.register` copies onto the model version; every load
goes through :meth:`ModelRegistry.download_verified`, which refuses a folder that differs.

MLflow metric names may not hold ``@``: ``ndcg@10`` is logged as ``ndcg_at_10`` (see
:func:`metric_key`); the dictionaries passed in and returned use the project's names.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from lambdarec.integrity import (
    MANIFEST_FILE,
    IntegrityError,
    build_manifest,
    manifest_bytes,
    sha256_bytes,
    verify_folder,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Champion",
    "Decision",
    "IntegrityError",
    "ModelRegistry",
    "RegistryError",
    "metric_key",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
#: The registered models: serving loads the ``two_tower`` champion and the ``deepfm`` of its run.
TWO_TOWER, DEEPFM = "two_tower", "deepfm"
#: Tag names (on runs and model versions).
TAG_EVALUATION = "lambdarec.evaluation_id"
TAG_FEATURE_SERVICES = "lambdarec.feature_services"
TAG_DATA_START = "lambdarec.data_start"
TAG_DATA_END = "lambdarec.data_end"
TAG_PROMOTION = "lambdarec.promotion"
TAG_REASON = "lambdarec.promotion_reason"
TAG_PREVIOUS = "lambdarec.previous_champion"
TAG_ROLLED_BACK = "lambdarec.rolled_back_from"
#: The sha256 of the run's ``manifest.json`` (on the run, and on the versions registered from it).
TAG_MANIFEST = "lambdarec.manifest_sha256"
#: MLflow shows this run tag as the run's description.
TAG_NOTE = "mlflow.note.content"
#: Where the model folder goes inside a run's artifacts.
MODEL_ARTIFACT_PATH = "model"


class RunArtifact(Protocol):
    """Something a run keeps beside its model (e.g. the drift monitor's reference profile)."""

    def log_to(self, client: MlflowClient, run_id: str) -> object: ...


class RegistryError(RuntimeError):
    """A run, version or alias is missing or inconsistent; the message says which."""


class TrackingServerDownError(RegistryError):
    """The tracking URI's server refuses connections (MLflow's client would retry for minutes)."""


def ensure_reachable(tracking_uri: str, *, timeout_s: float = 3.0) -> None:
    """Fail in one line when an ``http(s)`` tracking URI's host does not accept a connection.

    MLflow's client retries a refused connection with back-off for minutes before it fails, so a
    task run with the platform down (``dag.test`` of the drift or retraining DAG) seemed to hang.
    A ``sqlite``/``file`` URI needs no server and passes."""
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TrackingServerDownError(
            f"the MLflow tracking server at {tracking_uri} does not answer ({reason}): start the "
            "platform (`make platform-up`) or point LAMBDAREC_MLFLOW_TRACKING_URI at a running one"
        ) from None


class Champion(NamedTuple):
    version: str
    run_id: str
    artifact_uri: str


@dataclass(frozen=True)
class Decision:
    """What :meth:`ModelRegistry.promote` did and why."""

    promoted: bool
    version: str
    #: The alias the version now holds: ``champion`` or ``challenger``.
    alias: str
    reason: str
    metric: str
    candidate_value: float
    #: The champion it was compared with (None when there was none).
    champion_version: str | None = None
    champion_value: float | None = None


def metric_key(name: str) -> str:
    """The MLflow metric name for a project metric name (``ndcg@10`` -> ``ndcg_at_10``)."""
    key = name.replace("@", "_at_")
    return re.sub(r"[^0-9A-Za-z_\-. :/]", "_", key)


class ModelRegistry:
    """One registered model (e.g. ``two_tower``) and its MLflow experiment."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        *,
        experiment: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        """``artifact_location`` applies when the experiment is created (a server with
        ``--serve-artifacts`` chooses its own; a sqlite/file URI would otherwise use ./mlruns)."""
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.model_name = model_name
        self.experiment = experiment or f"lambdarec/{model_name}"
        self._client: MlflowClient | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, model_name: str, *, experiment: str | None = None
    ) -> ModelRegistry:
        """The registry of the settings' tracking server (``settings.mlflow_uri``)."""
        return cls(settings.mlflow_uri, model_name, experiment=experiment)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            ensure_reachable(self.tracking_uri)
            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client

    # -- runs --------------------------------------------------------------------------------

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        return str(
            self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        )

    def log_run(
        self,
        *,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        evaluation_id: str,
        feature_services: Mapping[str, str] | None = None,
        data_range: tuple[str, str] | None = None,
        plots: Iterable[Path] = (),
        model_dir: Path | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        reference_profile: RunArtifact | None = None,
    ) -> str:
        """Record one training + evaluation as a finished run; returns the run id.

        ``evaluation_id`` names the dataset and split the metrics come from (promotion compares
        only runs with the same one). ``feature_services`` maps each Feast feature service to the
        version used; ``data_range`` is the (start, end) of the training data. ``plots`` are
        files logged under ``plots/``; ``model_dir`` is logged under ``model/`` (what
        :meth:`register` registers), with ``manifest.json`` listing its files' sha256 and the
        manifest's own sha256 as the run tag ``lambdarec.manifest_sha256``. ``reference_profile`` (lambdarec.monitoring.profile) is
        saved as the run's ``monitoring/reference_profile.json`` for drift monitoring.
        """
        from mlflow.entities import Metric, Param, RunTag

        run_tags = {TAG_EVALUATION: evaluation_id, **(tags or {})}
        all_params = {str(k): str(v) for k, v in params.items()}
        if feature_services:
            run_tags[TAG_FEATURE_SERVICES] = json.dumps(dict(feature_services), sort_keys=True)
            all_params.update({f"feature_service.{k}": str(v) for k, v in feature_services.items()})
        if data_range:
            run_tags[TAG_DATA_START], run_tags[TAG_DATA_END] = map(str, data_range)
            all_params["data_start"], all_params["data_end"] = map(str, data_range)
        run = self.client.create_run(self.experiment_id(), tags=run_tags, run_name=run_name)
        run_id = run.info.run_id
        try:
            stamp = run.info.start_time or 0
            self.client.log_batch(
                run_id,
                metrics=[Metric(metric_key(k), float(v), stamp, 0) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in all_params.items()],
                tags=[RunTag("lambdarec.metric_names", json.dumps(sorted(metrics)))],
            )
            for plot in plots:
                self.client.log_artifact(run_id, str(plot), artifact_path="plots")
            if model_dir is not None:
                if not Path(model_dir).is_dir():
                    raise RegistryError(f"model folder {model_dir} does not exist")
                # Hashed before the upload: the manifest describes the folder as exported.
                manifest = manifest_bytes(build_manifest(Path(model_dir)))
                self.client.log_artifacts(run_id, str(model_dir), artifact_path=MODEL_ARTIFACT_PATH)
                self.client.log_text(run_id, manifest.decode("utf-8"), MANIFEST_FILE)
                self.client.set_tag(run_id, TAG_MANIFEST, sha256_bytes(manifest))
            # Drift monitoring compares live traffic with the training distributions saved here.
            if reference_profile is not None:
                reference_profile.log_to(self.client, run_id)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def register(self, run_id: str, artifact_path: str = MODEL_ARTIFACT_PATH) -> str:
        """Register the run's model folder as a new version of the model; returns the version.
        The version carries the sha256 of the run's ``manifest.json`` (tag
        ``lambdarec.manifest_sha256``), what :meth:`download_verified` checks the files with."""
        from mlflow.exceptions import MlflowException

        run = self.client.get_run(run_id)
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(self.model_name)
        tags = {TAG_EVALUATION: run.data.tags.get(TAG_EVALUATION, "")}
        # The manifest describes ``model/``: a version of another folder gets no tag (and every
        # load of it is refused until it is registered from a run that logged one).
        if artifact_path == MODEL_ARTIFACT_PATH and run.data.tags.get(TAG_MANIFEST):
            tags[TAG_MANIFEST] = run.data.tags[TAG_MANIFEST]
        version = self.client.create_model_version(
            self.model_name,
            source=f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}",
            run_id=run_id,
            tags=tags,
        )
        return str(version.version)

    # -- aliases -----------------------------------------------------------------------------

    def _by_alias(self, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException:  # no such alias (or no such model yet)
            return None

    def evaluation_of(self, run_id: str) -> str:
        """The evaluation a run's metrics come from (its ``lambdarec.evaluation_id`` tag; "" if none)."""
        return str(self.client.get_run(run_id).data.tags.get(TAG_EVALUATION, ""))

    def get_champion(self) -> Champion | None:
        """(version, run id, artifact URI) of the champion, or None before the first promotion."""
        version = self._by_alias(CHAMPION)
        if version is None:
            return None
        return Champion(str(version.version), str(version.run_id), str(version.source))

    def get_version(self, version: str) -> Champion:
        """(version, run id, artifact URI) of a registered ``version`` (RegistryError if none)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version(self.model_name, str(version))
        except MlflowException as error:
            raise RegistryError(
                f"{self.model_name} has no version {version}: register it, or publish the index "
                "of a registered version"
            ) from error
        return Champion(str(found.version), str(found.run_id), str(found.source))

    def version_of_run(self, run_id: str) -> Champion | None:
        """The newest version registered from ``run_id``, or None."""
        found = self.client.search_model_versions(
            f"name = '{self.model_name}' and run_id = '{run_id}'"
        )
        if not found:
            return None
        newest = max(found, key=lambda v: int(v.version))
        return Champion(str(newest.version), str(newest.run_id), str(newest.source))

    def download_verified(self, version: Champion) -> Path:
        """The registered ``version``'s model folder on local disk, checked file by file against
        its run's ``manifest.json``, and the manifest against the version's tag; raises a one-line
        :class:`~lambdarec.integrity.IntegrityError` naming the file on any difference (a changed,
        missing or extra file, a replaced manifest). Every load of a registered model uses it."""
        import mlflow

        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=version.artifact_uri, tracking_uri=self.tracking_uri
            )
        )
        self._verify(version, local)
        return local

    def verify_local(self, version: str, folder: Path) -> None:
        """Check a local copy of registered ``version``'s model folder (e.g. the run folder it
        was logged from, before its vectors are published) as :meth:`download_verified` does."""
        self._verify(self.get_version(version), folder)

    def _verify(self, version: Champion, folder: Path) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        expected = (self.client.get_model_version(self.model_name, version.version).tags or {}).get(
            TAG_MANIFEST
        )
        try:
            manifest_path = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=MANIFEST_FILE, tracking_uri=self.tracking_uri
            )
            manifest: bytes | None = Path(manifest_path).read_bytes()
        except (MlflowException, OSError):  # absent or unreadable: refused below, by name
            manifest = None
        verify_folder(folder, manifest, expected, what=f"{self.model_name} v{version.version}")

    def get_challenger(self) -> Champion | None:
        version = self._by_alias(CHALLENGER)
        if version is None:
            return None
        return Champion(str(version.version), str(version.run_id), str(version.source))

    def _run_metric(self, run_id: str, metric: str) -> float | None:
        value = self.client.get_run(run_id).data.metrics.get(metric_key(metric))
        return None if value is None else float(value)

    def promote(
        self,
        version: str,
        candidate_metrics: Mapping[str, float],
        metric: str = "ndcg@10",
        *,
        higher_is_better: bool = True,
        min_delta: float = 0.0,
        floor: tuple[str, float] | None = None,
    ) -> Decision:
        """Make ``version`` champion if it beats the champion on the same evaluation, else challenger.

        The candidate must improve ``metric`` by more than ``min_delta`` (a tie does not promote),
        and, with ``floor`` = (what, value), also beat that value by more than ``min_delta`` (e.g.
        the best pipeline without the candidate's models, on the same evaluation).
        A champion evaluated on a different dataset/split (tag ``lambdarec.evaluation_id``) is not
        comparable: the candidate stays challenger until both are evaluated alike. The decision
        and its reason are written on the candidate's run (tags + note) and model version.
        """
        candidate = self.client.get_model_version(self.model_name, str(version))
        run_id = str(candidate.run_id)
        evaluation = self.evaluation_of(run_id)
        if metric not in candidate_metrics:
            raise RegistryError(
                f"candidate metrics have no {metric!r}: {sorted(candidate_metrics)}"
            )
        value = float(candidate_metrics[metric])
        champion = self.get_champion()
        champion_value: float | None = None
        if champion is None:
            promoted, reason = True, f"no champion yet; {metric}={value:.6g} on {evaluation!r}"
        elif champion.version == str(version):
            promoted, reason = True, f"version {version} is already the champion"
        else:
            champion_eval = self.evaluation_of(champion.run_id)
            champion_value = self._run_metric(champion.run_id, metric)
            if champion_eval != evaluation:
                promoted = False
                reason = (
                    f"not comparable: champion v{champion.version} was evaluated on "
                    f"{champion_eval!r}, the candidate on {evaluation!r}; evaluate both alike"
                )
            elif champion_value is None:
                promoted = False
                reason = f"champion v{champion.version}'s run has no {metric!r} to compare with"
            else:
                delta = value - champion_value if higher_is_better else champion_value - value
                promoted = delta > min_delta
                verb = "beats" if promoted else "does not beat"
                reason = (
                    f"{metric}={value:.6g} {verb} champion v{champion.version}'s "
                    f"{champion_value:.6g} on {evaluation!r} "
                    f"({'higher' if higher_is_better else 'lower'} is better, "
                    f"needed a margin > {min_delta:g})"
                )
        if promoted and floor is not None:
            what, floor_value = floor
            delta = value - floor_value if higher_is_better else floor_value - value
            if delta <= min_delta:
                promoted = False
                reason = (
                    f"{metric}={value:.6g} does not beat {what}'s {floor_value:.6g} on "
                    f"{evaluation!r} (needed a margin > {min_delta:g}); before that: {reason}"
                )
        alias = CHAMPION if promoted else CHALLENGER
        if promoted and champion is not None and champion.version != str(version):
            self.client.set_model_version_tag(
                self.model_name, str(version), TAG_PREVIOUS, champion.version
            )
        self.client.set_registered_model_alias(self.model_name, alias, str(version))
        if promoted and self._holds(CHALLENGER, str(version)):
            self.client.delete_registered_model_alias(self.model_name, CHALLENGER)
        self._record(run_id, str(version), "promoted" if promoted else "not promoted", reason)
        log.info("%s v%s -> %s: %s", self.model_name, version, alias, reason)
        return Decision(
            promoted=promoted,
            version=str(version),
            alias=alias,
            reason=reason,
            metric=metric,
            candidate_value=value,
            champion_version=None if champion is None else champion.version,
            champion_value=champion_value,
        )

    def rollback(self, reason: str = "rollback") -> Champion:
        """Give ``champion`` back to the version the current champion replaced; returns it."""
        current = self._by_alias(CHAMPION)
        if current is None:
            raise RegistryError(f"{self.model_name} has no champion to roll back")
        previous = (current.tags or {}).get(TAG_PREVIOUS)
        if not previous:
            raise RegistryError(
                f"{self.model_name} v{current.version} replaced no earlier champion; "
                "nothing to roll back to"
            )
        self.client.set_registered_model_alias(self.model_name, CHAMPION, previous)
        self.client.set_model_version_tag(
            self.model_name,
            str(current.version),
            TAG_ROLLED_BACK,
            f"v{current.version} -> v{previous}: {reason}",
        )
        self._record(
            str(current.run_id),
            str(current.version),
            "rolled back",
            f"champion rolled back to v{previous}: {reason}",
        )
        champion = self.get_champion()
        assert champion is not None
        log.info(
            "%s champion rolled back from v%s to v%s", self.model_name, current.version, previous
        )
        return champion

    def _holds(self, alias: str, version: str) -> bool:
        held = self._by_alias(alias)
        return held is not None and str(held.version) == version

    def _record(self, run_id: str, version: str, outcome: str, reason: str) -> None:
        """Write the outcome on the run (tags and its note) and on the model version."""
        client = self.client
        client.set_tag(run_id, TAG_PROMOTION, outcome)
        client.set_tag(run_id, TAG_REASON, reason)
        note = client.get_run(run_id).data.tags.get(TAG_NOTE, "")
        line = f"{self.model_name} v{version} {outcome}: {reason}"
        client.set_tag(run_id, TAG_NOTE, f"{note}\n{line}".strip())
        client.set_model_version_tag(self.model_name, version, TAG_PROMOTION, outcome)
        client.set_model_version_tag(self.model_name, version, TAG_REASON, reason)
