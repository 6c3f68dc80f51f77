"""MLflow tracking, fail-soft. This is the only module that imports mlflow.

Default tracking URI: a SQLite file in the repository (mlflow.db); MLFLOW_TRACKING_URI overrides.
A pipeline run started by the Prefect flow opens a parent run and passes its id down in
LLMPIPE_PARENT_RUN_ID; each stage process opens a nested run under it. Every call is guarded: a tracker
that is down costs one warning, never the run, and never minutes of retries.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from llmpipe.util.envlock import environment_tags
from llmpipe.util.io import InputError, dvc_lock_out_hashes, dvc_md5, load_yaml

log = logging.getLogger(__name__)

PARENT_ENV = "LLMPIPE_PARENT_RUN_ID"
FLOW_RUN_ENV = "LLMPIPE_PREFECT_FLOW_RUN_ID"
BATCH_POINTS = 500  # metric points buffered before one log_batch call


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _configure_env(uri: str) -> None:
    os.environ.setdefault("DO_NOT_TRACK", "true")
    if uri.startswith(("http://", "https://")):
        # MLflow's defaults retry a dead server for minutes; training must never wait on the tracker.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _server_reachable(uri: str, timeout: float = 3.0) -> bool:
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except Exception:
        return False


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def dvc_lineage_tags(root: Path, stage: str) -> dict[str, str]:
    """dvc.lock hashes of the stage's deps that are upstream outs: the data versions it reads."""
    try:
        deps = load_yaml((root / "dvc.yaml").read_text())["stages"][stage].get("deps", [])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}
    hashes = dvc_lock_out_hashes(root)
    return {f"dvc.dep.{dep}": hashes[dep] for dep in deps if dep in hashes}


def stage_inputs(root: Path, stage: str) -> dict[str, tuple[str, str]]:
    """{input name: (path, DVC md5)} of the stage's declared inputs (the registry's): the hash dvc.lock
    records for the upstream out (what `dvc repro` versioned), else computed as DVC would (a stage run
    outside DVC, or before the first lock). Inputs not on disk are left out."""
    from llmpipe.stages.registry import stage as stage_spec

    spec, locked = stage_spec(stage), dvc_lock_out_hashes(root)
    out = {}
    for name in spec.inputs:
        path = spec.inp(name).as_posix()
        if path in locked:
            out[name] = (path, locked[path])
        elif (root / path).exists():
            out[name] = (path, dvc_md5(root / path))
    return out


def flatten(prefix: str, obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: obj}


class Tracker:
    """One MLflow run. Methods never raise; after the first failure the tracker goes quiet."""

    def __init__(self, root: Path, experiment: str, run_name: str, parent_run_id: str | None = None,
                 tags: dict[str, str] | None = None):
        self.run_id: str | None = None
        self._client = None
        self._buffer: list = []
        self._warned = False
        uri = tracking_uri(root)
        _configure_env(uri)
        if not _server_reachable(uri):
            self._fail(f"MLflow server {uri} is unreachable")
            return
        try:
            # An explicit client, not mlflow.set_tracking_uri: that one exports MLFLOW_TRACKING_URI to
            # every child process, which would send other repositories' runs to this database.
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=uri)
            exp = self._client.get_experiment_by_name(experiment)
            if exp:
                exp_id = exp.experiment_id
            else:  # beside a local database, artifacts go to mlartifacts/ in the repository
                location = None if "://" in uri.removeprefix("sqlite://") else (root / "mlartifacts").resolve().as_uri()
                # A training experiment: MLflow 3's UI then opens on its runs table, not the GenAI view.
                exp_id = self._client.create_experiment(experiment, artifact_location=location,
                                                        tags={"mlflow.experimentKind": "custom_model_development"})
            all_tags = {"mlflow.runName": run_name, **(tags or {})}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self._client.create_run(exp_id, tags=all_tags, run_name=run_name).info.run_id
        except Exception as err:  # noqa: BLE001 - fail-soft by contract
            self._fail(f"MLflow run could not start ({err.__class__.__name__}: {err})")

    def _fail(self, why: str) -> None:
        if not self._warned:
            log.warning("tracking disabled: %s; metrics stay in the DVC metrics files", why)
            self._warned = True
        self._client, self.run_id = None, None

    def _call(self, fn, *args, **kwargs) -> None:
        if self._client is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            self._fail(f"{err.__class__.__name__}: {err}")

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call(lambda chunk: self._client.log_batch(self.run_id, params=chunk), items[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call(lambda: self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        """Buffer numeric metrics; they are sent with log_batch, BATCH_POINTS at a time."""
        if self._client is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._buffer.append(Metric(k, float(v), ts, step))
        if len(self._buffer) >= BATCH_POINTS:
            self.flush()

    def flush(self) -> None:
        while self._buffer and self._client is not None:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self._call(lambda: self._client.log_batch(self.run_id, metrics=chunk))
        self._buffer = []

    def log_datasets(self, root: Path, inputs: dict[str, tuple[str, str]]) -> None:
        """The stage's input data as the run's dataset inputs (the run page's "Datasets used"): named
        by path, its DVC md5 as digest, its input name as context."""
        if self._client is None or not inputs:
            return
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        def entity(name: str, path: str, md5: str) -> DatasetInput:
            source = LocalArtifactDatasetSource(str((root / path).resolve()))
            return DatasetInput(MetaDataset(source, name=path, digest=md5)._to_mlflow_entity(),
                                tags=[InputTag(MLFLOW_DATASET_CONTEXT, name)])

        self._call(lambda: self._client.log_inputs(
            self.run_id, datasets=[entity(name, path, md5) for name, (path, md5) in inputs.items()]))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._client is not None and path.exists():
            self._call(self._client.log_artifact, self.run_id, str(path), artifact_path)

    def log_model(self, model_dir: Path, registered_name: str | None, tags: dict[str, str]) -> str | None:
        """Log a model folder (safetensors + config, no pickle) as the artifact "model" and, when a name
        is given, register it as a new version of that model; returns the version."""
        if self._client is None or not model_dir.exists():
            return None
        self._call(self._client.log_artifacts, self.run_id, str(model_dir), "model")
        if not registered_name or self._client is None:
            return None
        try:
            from mlflow.exceptions import MlflowException

            try:
                self._client.create_registered_model(registered_name)
            except MlflowException:
                pass  # it exists already
            source = f"{self._client.get_run(self.run_id).info.artifact_uri}/model"
            version = self._client.create_model_version(registered_name, source, run_id=self.run_id, tags=tags)
            return version.version
        except Exception as err:  # noqa: BLE001
            self._fail(f"model registration failed ({err.__class__.__name__}: {err})")
            return None

    def find_model_version(self, name: str, tag: str, value: str) -> str | None:
        """The latest version of registered model `name` whose tag `tag` is `value` (a base model by the
        DVC hash of its weights), or None."""
        if self._client is None:
            return None
        try:
            found = [v for v in self._client.search_model_versions(f"name='{name}'") if v.tags.get(tag) == value]
        except Exception:  # noqa: BLE001 - a lookup for a tag: never fail the run for it
            return None
        return max(found, key=lambda v: int(v.version)).version if found else None

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self._call(lambda: self._client.set_terminated(self.run_id, status=status))


def start_stage_run(root: Path, experiment: str, stage: str, params: dict[str, Any]) -> Tracker:
    tags = {"llmpipe.stage": stage}
    if commit := git_commit(root):
        tags["git.commit"] = commit
    if flow_run := os.environ.get(FLOW_RUN_ENV):
        tags["prefect.flow_run_id"] = flow_run
    tags.update(dvc_lineage_tags(root, stage))
    tags.update(environment_tags(root))  # `llmpipe lineage` compares env.lock_sha256 with the current one
    tracker = Tracker(root, experiment, stage, parent_run_id=os.environ.get(PARENT_ENV), tags=tags)
    tracker.log_params(flatten("", params))
    if tracker.run_id is not None:  # hashing an input outside DVC reads it: only for a live run
        try:
            inputs = stage_inputs(root, stage)
        except OSError as err:
            log.warning("dataset inputs not logged: %s", err)
            inputs = {}
        tracker.log_datasets(root, inputs)
    return tracker


def model_run(root: Path, target: str) -> tuple[str | None, dict[str, str]]:
    """(run id, tags) of an MLflow run id or of a registered model version `models:/<name>/<version>`
    (the version's own tags: git commit, data and weights hashes, how it was trained)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    _configure_env(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        if target.startswith("models:/"):
            name, _, version = target.removeprefix("models:/").rpartition("/")
            found = client.get_model_version(name, version)
            # a version whose tags do not carry env.*: its run's tags have them
            run_tags = client.get_run(found.run_id).data.tags if found.run_id else {}
            return found.run_id, {**{k: v for k, v in run_tags.items() if k.startswith("env.")}, **found.tags}
        return target, dict(client.get_run(target).data.tags)
    except MlflowException as err:
        raise InputError(f"{target}: not a git revision, MLflow run or model version in {uri} ({err.message})") from None


def recorded_lineage(root: Path, target: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(git commit, {path: md5} of the data it read, all its tags) recorded on an MLflow run id or on a
    registered model version `models:/<name>/<version>`."""
    _, tags = model_run(root, target)
    commit = tags.get("git.commit")
    if not commit or commit == "unknown":
        raise InputError(f"{target}: has no git.commit tag; it was not made from a git checkout")
    return commit, {k.removeprefix("dvc.dep."): v for k, v in tags.items() if k.startswith("dvc.dep.")}, dict(tags)


def tracking_configured(root: Path) -> bool:
    """A tracking URI is set, or the repository's default SQLite database exists."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) or (root / "mlflow.db").exists()


def run_of_weights(root: Path, name: str, weights_md5: str) -> str | None:
    """The run that registered the latest version of model `name` with these weights (their DVC hash),
    or None; never raises."""
    uri = tracking_uri(root)
    _configure_env(uri)
    if not _server_reachable(uri):
        return None
    try:
        from mlflow.tracking import MlflowClient

        found = [v for v in MlflowClient(tracking_uri=uri).search_model_versions(f"name='{name}'")
                 if v.tags.get("dvc.out.data/model") == weights_md5]
    except Exception:  # noqa: BLE001 - fail-soft by contract
        return None
    return max(found, key=lambda v: int(v.version)).run_id if found else None


def log_artifact_to_run(root: Path, run_id: str, path: Path) -> bool:
    """Add a file to an existing run's artifacts; a tracker that is down or a run that is gone costs one
    warning."""
    uri = tracking_uri(root)
    _configure_env(uri)
    if not _server_reachable(uri):
        log.warning("MLflow server %s is unreachable: %s not logged", uri, path)
        return False
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).log_artifact(run_id, str(path))
        return True
    except Exception as err:  # noqa: BLE001 - fail-soft by contract
        log.warning("%s not logged to MLflow run %s (%s: %s)", path, run_id, err.__class__.__name__, err)
        return False


def download_model_version(root: Path, target: str, dest: Path) -> Path:
    """Download registered model version `models:/<name>/<version>` (its safetensors folder) into dest;
    the folder's path."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, _, version = target.removeprefix("models:/").rpartition("/")
    if not name or not version.isdigit():
        raise InputError(f"{target}: name a registered model version as models:/NAME/VERSION (e.g. "
                         "models:/llmpipe-gpt-chat/2)")
    uri = tracking_uri(root)
    _configure_env(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        source = client.get_model_version_download_uri(name, version)
        folder = Path(download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=uri))
    except MlflowException as err:
        raise InputError(f"{target}: no such model version in {uri} ({err.message})") from None
    if not (folder / "model.safetensors").exists():
        raise InputError(f"{target}: its artifact {source} holds no model.safetensors")
    return folder
