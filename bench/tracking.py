"""MLflow tracking: the schema every sweep writes and every report reads.

Layout
- one experiment per grid, named `experiment_name(grid)`, created by the sweep driver (never by jobs:
  concurrent `set_experiment` calls race and lose runs into "Default");
- one parent run per grid (`TAG_ROLE` = "sweep") and one run per cell (`TAG_ROLE` = "cell"), the cell
  run a child of the parent (`mlflow.parentRunId`); the cell run id lives in the cell's output folder so
  that a requeued job logs into the same run;
- cell runs carry the tags below, the flattened resolved config as params, training curves as stepped
  metrics `<stage>/<name>`, and the final metrics named in `METRICS`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

from bench.core.io import atomic_write_json

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "titok-bench/"


def experiment_name(grid: str) -> str:
    return EXPERIMENT_PREFIX + grid


# ---- tags on cell runs (all values are strings) ------------------------------------------------------
TAG_ROLE = "titok.role"  # "sweep" | "cell"
TAG_GRID = "titok.grid"  # grid name, e.g. "latent_vs_size"
TAG_CELL = "titok.cell"  # cell name, e.g. "TiTok-S-32" (the tokenizer variant name)
TAG_CELL_ID = "titok.cell_id"  # short hash of the result-determining config
TAG_MODEL_SIZE = "titok.model_size"  # "S" | "B" | "L" (encoder size letter)
TAG_NUM_TOKENS = "titok.num_tokens"  # K, e.g. "32"
TAG_PRESET = "titok.preset"  # "tiny" | "paper" | ...
TAG_WEIGHTS_RANDOM = "titok.weights_random"  # "true" when any pretrained network was a random stand-in
TAG_SMOKE = "titok.smoke"  # "true": tiny preset, stand-in weights or < 50,000 samples; never vs the paper
TAG_STATUS = "titok.status"  # "running" | "finished" | "failed": all of the cell's stages
TAG_STAGES_DONE = "titok.stages_done"  # comma-separated stage names
TAG_CODE_VERSION = "titok.code_version"  # git commit (+ "-dirty")
TAG_DEVICE = "titok.device"  # e.g. "cpu", "NVIDIA H100 80GB HBM3 x8"
TAG_FID_BACKEND = "titok.fid_backend"  # "torch-fidelity" (primary) ; clean-fid is logged as gfid_clean
TAG_REFERENCE = "titok.reference"  # what the FIDs compare against (dataset split / reference batch)
TAG_TOKENIZER = "titok.tokenizer"  # tokenizer variant name
TAG_GENERATOR = "titok.generator"  # generator variant name

# ---- final metrics of a cell run -----------------------------------------------------------------------
METRICS = {
    "rfid": "reconstruction FID (torch-fidelity Inception, vs the evaluation images)",
    "rfid_is": "Inception Score of the reconstructions",
    "psnr": "reconstruction PSNR (dB)",
    "ssim": "reconstruction SSIM",
    "lpips": "reconstruction LPIPS (VGG)",
    "codebook_usage": "fraction of codebook entries used on the evaluation images",
    "codebook_entropy": "entropy of the code histogram (bits)",
    "rfid_num_images": "number of images behind rfid",
    "gfid": "generation FID (ADM protocol, torch-fidelity Inception)",
    "gfid_clean": "generation FID from clean-fid (second backend)",
    "gfid_is": "Inception Score of the samples (10 splits)",
    "sfid": "spatial FID of the samples",
    "precision": "improved precision (k=3) of the samples",
    "recall": "improved recall (k=3) of the samples",
    "gfid_num_samples": "number of samples behind gfid",
    "probe_top1": "linear-probe top-1 accuracy on frozen tokenizer features",
    "samples_per_s": "generation throughput incl. de-tokenization (samples/s)",
    "cost_gpu_hours": "accelerator-hours of all training stages (CPU: core-hours)",
    "cost_wall_hours": "wall-clock hours of all training stages",
}


# ---- where the runs go --------------------------------------------------------------------------------------
DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"  # the embedded store, relative to the working directory
RUN_ID_FILE = "mlflow_run.json"  # in a cell's folder: the cell's run, reused by reruns and requeued jobs
BUFFER_FILE = "mlflow_buffer.jsonl"  # in a cell's folder: what could not be logged yet

# Jobs must not block for minutes on a dead server (MLflow's default retries take ~4 min): fail fast and
# let RunLogger buffer and retry.
JOB_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def resolve_uri(uri: str | None, outputs: str | os.PathLike | None = None) -> str:
    """config value, else $MLFLOW_TRACKING_URI, else a sqlite file in `outputs` (made absolute so that jobs
    running elsewhere find the same store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
        return uri
    folder = Path(outputs or "outputs").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


# ---- the driver's side: experiment, parent run, one run per cell ---------------------------------------------
def ensure_experiment(uri: str, grid: str, artifact_root: str | os.PathLike | None = None) -> str:
    """The grid's experiment id, created once here (never by jobs)."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment_name(grid))
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root and uri.startswith("sqlite") else None
    return c.create_experiment(experiment_name(grid), artifact_location=location, tags={TAG_GRID: grid})


def ensure_run(uri: str, experiment_id: str, folder: str | os.PathLike, name: str, tags: dict[str, str],
               parent_run_id: str | None = None) -> str:
    """The run recorded in `folder`, or a new one (recorded there): a cell never gets two runs."""
    record = Path(folder) / RUN_ID_FILE
    c = client(uri)
    if record.exists():
        run_id = json.loads(record.read_text())["run_id"]
        try:
            c.get_run(run_id)
            return run_id
        except Exception as err:  # the store was reset or is another one: start a new run
            log.warning("run %s recorded in %s is not in %s (%s); creating a new run", run_id, record, uri, err)
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id, run_name=name, tags=all_tags)
    atomic_write_json(record, {"run_id": run.info.run_id, "tracking_uri": uri, "experiment_id": experiment_id})
    return run.info.run_id


# ---- the jobs' side: log without ever failing the job, and without losing anything -----------------------------
class RunLogger:
    """Logs metrics, params, tags and artifacts into one run. A call that fails (server down, sqlite locked)
    is retried briefly, then appended to a buffer file next to the run record and replayed, in order, before
    the next call that reaches the store and at `flush()`. Nothing here raises into the training job."""

    def __init__(self, uri: str, run_id: str, buffer: str | os.PathLike, retries: int = 3, wait_s: float = 1.0,
                 backoff_s: float = 30.0):
        for k, v in JOB_HTTP_ENV.items():
            os.environ.setdefault(k, v)
        self.uri, self.run_id, self.buffer = uri, run_id, Path(buffer)
        self.retries, self.wait_s, self.backoff_s = retries, wait_s, backoff_s
        self._down_until = 0.0  # after a failure, buffer without trying for backoff_s (keeps training fast)
        self._client = client(uri)

    # public API
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        ts = int(time.time() * 1000)
        self._do({"op": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step or 0,
                  "ts": ts})

    def log_params(self, params: dict[str, object]) -> None:
        self._do({"op": "params", "params": {k: str(v)[:6000] for k, v in params.items()}})

    def set_tags(self, tags: dict[str, object]) -> None:
        self._do({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._do({"op": "artifact", "path": str(path), "artifact_path": artifact_path})

    def set_status(self, status: str) -> None:
        """"RUNNING", "FINISHED" or "FAILED"."""
        self._do({"op": "status", "status": status})

    def flush(self) -> bool:
        """Replay the buffer now; True when it is empty afterwards."""
        self._down_until = 0.0
        with self._locked() as f:
            return self._replay(f)

    # internals
    def _apply(self, entry: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        c, op = self._client, entry["op"]
        if op == "metrics":
            c.log_batch(self.run_id, metrics=[Metric(k, v, entry["ts"], entry["step"])
                                              for k, v in entry["metrics"].items()], synchronous=True)
        elif op == "params":
            existing = c.get_run(self.run_id).data.params
            new = {k: v for k, v in entry["params"].items() if k not in existing}  # params are write-once
            if new:
                c.log_batch(self.run_id, params=[Param(k, v) for k, v in new.items()], synchronous=True)
        elif op == "tags":
            c.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()], synchronous=True)
        elif op == "artifact":
            if Path(entry["path"]).exists():
                c.log_artifact(self.run_id, entry["path"], entry["artifact_path"])
        elif op == "status":
            if entry["status"] == "RUNNING":
                c.update_run(self.run_id, status="RUNNING")
            else:
                c.set_terminated(self.run_id, status=entry["status"])

    def _try(self, entry: dict) -> bool:
        if time.time() < self._down_until:
            return False
        for attempt in range(self.retries):
            try:
                self._apply(entry)
                return True
            except Exception as err:  # any store failure: retry, then buffer
                if attempt == self.retries - 1:
                    self._down_until = time.time() + self.backoff_s
                    log.warning("MLflow unavailable (%s: %s); buffering to %s", type(err).__name__, err, self.buffer)
                else:
                    time.sleep(self.wait_s * (attempt + 1))
        return False

    def _do(self, entry: dict) -> None:
        with self._locked() as f:
            if not self._replay(f) or not self._try(entry):
                f.seek(0, os.SEEK_END)
                f.write(json.dumps(entry) + "\n")
                f.flush()

    def _replay(self, f) -> bool:
        f.seek(0)
        pending = [json.loads(line) for line in f.read().splitlines() if line.strip()]
        if not pending:
            return True
        done = 0
        for entry in pending:
            if not self._try(entry):
                break
            done += 1
        f.seek(0)
        f.truncate()
        f.write("".join(json.dumps(e) + "\n" for e in pending[done:]))
        f.flush()
        return done == len(pending)

    class _Lock:
        def __init__(self, path: Path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(path, "a+")

        def __enter__(self):
            fcntl.flock(self.f, fcntl.LOCK_EX)  # several processes of one cell may log at once (DDP is rank 0 only)
            return self.f

        def __exit__(self, *exc):
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()

    def _locked(self):
        return self._Lock(self.buffer)


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested configs as MLflow params."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
