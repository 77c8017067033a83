"""MLflow tracking: the schema every sweep writes and every report reads.

Layout
- one experiment per grid, named `experiment_name(grid)`, created by name (never `set_experiment`: concurrent
  calls race and lose runs into "Default");
- one parent run per grid (`TAG_ROLE` = "sweep") and one run per cell (`TAG_ROLE` = "cell"), the cell
  run a child of the parent (`mlflow.parentRunId`); the cell run id lives in the cell's output folder so
  that a requeued job logs into the same run. The driver records each run there (`declare_run`); when the store
  does not answer at that moment, the record says what the run is and the first logger that reaches the store
  creates it, so a sweep starts and runs during an outage;
- cell runs carry the tags below, the flattened resolved config as params, training curves as stepped
  metrics `<stage>/<name>`, the final metrics named in `METRICS`, and, from rank 0 of each training stage, the
  machine's CPU/GPU utilisation and memory as `system/*` metrics (`SystemMetrics`, through the same buffer).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from bench.core.io import atomic_write_json
from bench.core.lock import file_lock

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
TAG_CODE_SNAPSHOT = "titok.code_snapshot"  # the copy of the code the jobs import (bench.launch.snapshot_code)
TAG_SPEED_PATH = "titok.speed_path"  # the speed stage's mode, the path it ran and why, e.g. "auto -> fast (bf16+...)"
TAG_SAMPLE_PATH = "titok.sample_path"  # the inference path eval_gen's samples ran (exact fp32 for gFID parity)
TAG_DEVICE = "titok.device"  # e.g. "cpu", "NVIDIA H100 80GB HBM3 x8"
# what an evaluation (rfid | gfid) used, as eval_tag(metric, kind) (bench.stages.base.feature_tags); clean-fid's
# distance is logged as the metric gfid_clean
EVAL_TAG_KINDS = ("features", "features_sha256", "inception_dtype", "distance", "reference", "interval")


def eval_tag(metric: str, kind: str) -> str:
    if kind not in EVAL_TAG_KINDS:
        raise ValueError(f"unknown evaluation tag kind {kind!r}; known: {EVAL_TAG_KINDS}")
    return f"titok.{metric}_{kind}"


def precision_tag(stage: str) -> str:
    """The precision a training stage ran at (bench.core.dist.runnable_precision), e.g. titok.stage1_precision."""
    return f"titok.{stage}_precision"


# which registry files (bench.weights) a stage used, as weights_tag(name, kind): "revision" (the hub commit it was
# fetched at, or its URL) and "sha256", or that it was a random stand-in (bench.stages.task)
WEIGHTS_TAG_KINDS = ("revision", "sha256")


def weights_tag(name: str, kind: str) -> str:
    if kind not in WEIGHTS_TAG_KINDS:
        raise ValueError(f"unknown weights tag kind {kind!r}; known: {WEIGHTS_TAG_KINDS}")
    safe = re.sub(r"[^\w.\-]", "_", name)  # MLflow keys: no ':' (Windows) nor '@'
    return f"titok.weights.{safe}.{kind}"


TAG_REFERENCE = "titok.reference"  # what the FIDs compare against (dataset split / reference batch)
TAG_TOKENIZER = "titok.tokenizer"  # tokenizer variant name
TAG_GENERATOR = "titok.generator"  # generator variant name
TAG_FAILED_STAGE = "titok.failed_stage"  # the stage whose job raised or was killed; removed when a stage runs again
TAG_ERROR = "titok.error"  # that job's exception, likewise
ERROR_TAGS = (TAG_FAILED_STAGE, TAG_ERROR)

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
    "eval_skipped_images": "evaluation images skipped as unreadable (not counted in rfid_num_images)",
    "gfid": "generation FID (ADM protocol, torch-fidelity Inception)",
    "gfid_clean": "generation FID from clean-fid (second backend)",
    "gfid_is": "Inception Score of the samples (ADM: consecutive chunks of 5,000, the last one shorter)",
    "sfid": "spatial FID of the samples",
    "precision": "improved precision (k=3) of the samples",
    "recall": "improved recall (k=3) of the samples",
    "gfid_num_samples": "number of samples behind gfid",
    "probe_top1": "linear-probe top-1 accuracy on frozen tokenizer features",
    "samples_per_s": "generation throughput incl. de-tokenization (samples/s)",
    "encode_images_per_s": "tokenizer encode throughput, a tokenizer without a generator (images/s)",
    "decode_images_per_s": "tokenizer decode throughput, a tokenizer without a generator (images/s)",
    "cost_gpu_hours": "accelerator-hours of all training stages (CPU: core-hours)",
    "cost_wall_hours": "wall-clock hours of all training stages",
}


# the uncertainty of a final metric: `<metric>_lo` and `<metric>_hi` (a 95% interval), logged beside it; how an
# evaluation made its intervals is the tag eval_tag(<rfid | gfid | probe>, "interval")
INTERVAL_METRICS = ("rfid", "rfid_is", "psnr", "ssim", "lpips", "gfid", "gfid_is", "precision", "recall", "probe_top1")


def interval_keys(metric: str) -> tuple[str, str]:
    return f"{metric}_lo", f"{metric}_hi"


# ---- where the runs go --------------------------------------------------------------------------------------
DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"  # the embedded store, relative to the working directory
RUN_ID_FILE = "mlflow_run.json"  # in a cell's folder: the cell's run (or what it is to be), reused by reruns and jobs
RUN_LOCK_FILE = ".mlflow_run.lock"  # beside it: one process at a time checks or creates the run
STORE_LOCK_SUFFIX = ".lock"  # mlflow.db.lock beside a sqlite store: one process at a time creates it
BUFFER_FILE = "mlflow_buffer.jsonl"  # in a cell's folder: append-only, what could not be logged when it was made
ACKED_FILE = "mlflow_buffer.acked.json"  # beside it: how many bytes of the buffer the store has taken

# Jobs must not block for minutes on a dead server (MLflow's default retries take ~4 min): fail fast and
# let RunLogger buffer and retry.
JOB_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def fail_fast() -> None:
    """JOB_HTTP_ENV for this process and what it starts (unless the user set them): every client made here."""
    for k, v in JOB_HTTP_ENV.items():
        os.environ.setdefault(k, v)


def resolve_uri(uri: str | None, outputs: str | os.PathLike | None = None) -> str:
    """config value, else $MLFLOW_TRACKING_URI, else a sqlite file in `outputs` (made absolute so that jobs
    running elsewhere find the same store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
        return uri
    folder = Path(outputs or "outputs").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def client(uri: str):
    """A client of the store at `uri`. Making one opens the store, which creates and migrates a sqlite file that is
    not there yet: two processes doing that at once (two sweeps on a fresh outputs folder) both migrate and one dies
    in alembic, so they take turns on a lock file beside it."""
    from mlflow import MlflowClient

    fail_fast()
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    with file_lock(uri[len("sqlite:///") :] + STORE_LOCK_SUFFIX):
        return MlflowClient(tracking_uri=uri)


def refused(err: BaseException) -> bool:
    """The store answered and refused for good (4xx: no such run, a param logged before with another value):
    retrying cannot help. No answer, a 5xx, 429 or a locked sqlite file may pass later."""
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return False
    status = err.get_http_status_code()
    return 400 <= status < 500 and status != 429


class _Outages:
    """Per store, in this process: after a call that got no answer nobody here calls the store again for a while
    (5 s, doubling up to 5 min, reset by an answer), so a dead server costs a training loop one failed request per
    window instead of seconds at every log call."""

    FIRST_S, MAX_S = 5.0, 300.0

    def __init__(self):
        self.until: dict[str, float] = {}
        self.wait: dict[str, float] = {}

    def down(self, uri: str) -> bool:
        return time.monotonic() < self.until.get(uri, 0.0)

    def failed(self, uri: str) -> None:
        self.wait[uri] = min(self.wait.get(uri, self.FIRST_S / 2) * 2, self.MAX_S)
        self.until[uri] = time.monotonic() + self.wait[uri]

    def answered(self, uri: str) -> None:
        self.until.pop(uri, None)
        self.wait.pop(uri, None)

    def retry_now(self, uri: str) -> None:
        """The next call tries (a flush); the window keeps growing if it fails again."""
        self.until.pop(uri, None)


OUTAGES = _Outages()


# ---- the runs: the driver records what each run is; whoever first reaches the store creates it -------------------
def ensure_experiment(uri: str, grid: str, artifact_root: str | os.PathLike | None = None) -> str:
    """The grid's experiment id, created by name when missing (by the driver, or by the first job that reaches
    the store after an outage; create-by-name never lands a run in "Default")."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment_name(grid))
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root and uri.startswith("sqlite") else None
    try:
        return c.create_experiment(experiment_name(grid), artifact_location=location, tags={TAG_GRID: grid})
    except Exception:
        exp = c.get_experiment_by_name(experiment_name(grid))  # another process created it meanwhile
        if exp is None:
            raise
        return exp.experiment_id


def declare_run(
    uri: str,
    folder: str | os.PathLike,
    grid: str,
    name: str,
    tags: dict[str, str],
    parent: str | os.PathLike | None = None,
    artifact_root: str | os.PathLike | None = None,
) -> str | None:
    """The run of `folder` (`parent`: the folder of its parent run): the one recorded there, else a new one. What
    the run is (experiment, name, tags, parent) is recorded first, so that a store that does not answer now gets the
    run from the first logger that reaches it. Returns the run id, None while the store does not answer. Only the
    store's definite "no such run" replaces a recorded run (the store was reset or is another one): a transient
    error never duplicates a cell's run."""
    path = Path(folder) / RUN_ID_FILE
    with _run_lock(folder):
        old = json.loads(path.read_text()) if path.exists() else {}
        record = {
            "run_id": old.get("run_id"),
            "tracking_uri": uri,
            "grid": grid,
            "name": name,
            "tags": tags,
            "parent": str(parent) if parent else None,
            "artifact_root": str(artifact_root) if artifact_root else None,
        }
        if record["run_id"] and not OUTAGES.down(uri):
            try:
                client(uri).get_run(record["run_id"])
                OUTAGES.answered(uri)
            except Exception as err:
                if not refused(err):
                    OUTAGES.failed(uri)
                    log.warning(
                        "MLflow at %s does not answer (%s); keeping run %s", uri, type(err).__name__, record["run_id"]
                    )
                else:
                    log.warning(
                        "run %s recorded in %s is not in %s (%s); creating a new run", record["run_id"], path, uri, err
                    )
                    record["run_id"] = None
        if record != old:
            atomic_write_json(path, record)
        if record["run_id"] or OUTAGES.down(uri):
            return record["run_id"]
        try:
            return _create_run(uri, path, record)
        except Exception as err:
            if refused(err):
                raise
            OUTAGES.failed(uri)
            log.warning(
                "MLflow at %s does not answer (%s); run %r is created when it does", uri, type(err).__name__, name
            )
            return None


def resolve_run(uri: str, folder: str | os.PathLike) -> str:
    """The id of the run recorded in `folder`, creating the run (and its experiment and parent) if the driver
    could not. Raises what the store raises."""
    path = Path(folder) / RUN_ID_FILE
    with _run_lock(folder):
        record = json.loads(path.read_text())
        return record["run_id"] or _create_run(uri, path, record)


def _create_run(uri: str, path: Path, record: dict) -> str:
    exp_id = ensure_experiment(uri, record["grid"], record["artifact_root"])
    tags = dict(record["tags"])
    if record["parent"]:
        tags["mlflow.parentRunId"] = resolve_run(uri, record["parent"])
    run_id = client(uri).create_run(exp_id, run_name=record["name"], tags=tags).info.run_id
    atomic_write_json(path, dict(record, run_id=run_id))
    return run_id


def _run_lock(folder: str | os.PathLike):
    return file_lock(Path(folder) / RUN_LOCK_FILE)


# ---- the jobs' side: log without ever failing the job, and without losing anything -----------------------------
class RunLogger:
    """Logs metrics, params, tags and artifacts into the run recorded in `folder`. A call the store does not answer
    is appended (fsynced) to the folder's buffer, and the buffer is replayed, in order, before the next call that
    reaches the store and at `flush()`. The buffer is append-only: what the store has taken is counted in a
    separate file written atomically, a line torn by a killed writer is skipped with a warning, and an entry the
    store refuses for good is dropped with a warning (it cannot hold back what follows). Nothing here raises into
    the training job."""

    def __init__(self, uri: str, folder: str | os.PathLike):
        self.uri, self.folder = uri, Path(folder)
        self.buffer, self.acked = self.folder / BUFFER_FILE, self.folder / ACKED_FILE
        self._client = client(uri)
        self._run_id: str | None = None

    # public API
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        ts = int(time.time() * 1000)
        self._do({"op": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step or 0, "ts": ts})

    def log_params(self, params: dict[str, object]) -> None:
        self._do({"op": "params", "params": {k: str(v)[:6000] for k, v in params.items()}})

    def set_tags(self, tags: dict[str, object]) -> None:
        self._do({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def delete_tags(self, keys: tuple[str, ...]) -> None:
        self._do({"op": "untag", "keys": list(keys)})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._do({"op": "artifact", "path": str(path), "artifact_path": artifact_path})

    def set_status(self, status: str) -> None:
        """ "RUNNING", "FINISHED" or "FAILED"."""
        self._do({"op": "status", "status": status})

    def flush(self) -> bool:
        """Replay the buffer now; True when nothing is left in it."""
        OUTAGES.retry_now(self.uri)
        with file_lock(self.buffer) as f:
            return self._replay(f)

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._run_id = resolve_run(self.uri, self.folder)
        return self._run_id

    # internals
    def _apply(self, entry: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        c, op, run_id = self._client, entry["op"], self.run_id
        if op == "metrics":
            c.log_batch(
                run_id,
                metrics=[Metric(k, v, entry["ts"], entry["step"]) for k, v in entry["metrics"].items()],
                synchronous=True,
            )
        elif op == "params":
            existing = c.get_run(run_id).data.params
            new = {k: v for k, v in entry["params"].items() if k not in existing}  # params are write-once
            if new:
                c.log_batch(run_id, params=[Param(k, v) for k, v in new.items()], synchronous=True)
        elif op == "tags":
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()], synchronous=True)
        elif op == "untag":
            existing = c.get_run(run_id).data.tags
            for key in entry["keys"]:
                if key in existing:
                    c.delete_tag(run_id, key)
        elif op == "artifact":
            if Path(entry["path"]).exists():
                c.log_artifact(run_id, entry["path"], entry["artifact_path"])
        elif op == "status":
            if entry["status"] == "RUNNING":
                c.update_run(run_id, status="RUNNING")
            else:
                c.set_terminated(run_id, status=entry["status"])

    def _send(self, entry: dict) -> bool:
        """True when the store took the entry or refused it for good; False when it did not answer."""
        if OUTAGES.down(self.uri):
            return False
        try:
            self._apply(entry)
        except Exception as err:  # any store failure: buffer, or drop what the store refuses
            if not refused(err):
                OUTAGES.failed(self.uri)
                log.warning("MLflow unavailable (%s: %s); buffering to %s", type(err).__name__, err, self.buffer)
                return False
            log.warning("MLflow refused a %r entry for %s (%s); dropped", entry["op"], self.folder, err)
        OUTAGES.answered(self.uri)
        return True

    def _do(self, entry: dict) -> None:
        with file_lock(self.buffer) as f:
            if not (self._replay(f) and self._send(entry)):
                f.write(json.dumps(entry).encode() + b"\n")  # append mode: always at the end
                f.flush()
                os.fsync(f.fileno())

    def _replay(self, f) -> bool:
        """Send the buffer's entries past the acknowledged offset, in order, acknowledging each; True when none is
        left."""
        offset = self._acked_offset(f)
        f.seek(offset)
        for line in f.read().splitlines(keepends=True):
            try:
                entry = json.loads(line)
            except ValueError:  # torn by a killed writer (terminated by _acked_offset)
                log.warning("%s: skipping a torn entry at byte %d: %r", self.buffer, offset, line[:80])
            else:
                if not self._send(entry):
                    return False
            offset += len(line)
            atomic_write_json(self.acked, {"offset": offset})
        return True

    def _acked_offset(self, f) -> int:
        """Where the unsent entries start; a torn last line (a writer killed mid-line) is terminated first, so it
        is skipped as one bad line and nothing appended after it joins it."""
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
                f.flush()
                size += 1
        offset = json.loads(self.acked.read_text())["offset"] if self.acked.exists() else 0
        return offset if offset <= size else 0  # a buffer replaced by hand starts over


# ---- system metrics: CPU/GPU utilisation and memory of a training stage, through the same buffer -----------------
SYSTEM_PREFIX = "system/"  # MLflow's own system-metrics names, so its UI shows them in the run's system metrics
SYSTEM_METRICS_ENV = "TITOK_SYSTEM_METRICS_S"  # seconds between samples; 0 turns them off
SYSTEM_METRICS_INTERVAL_S = 10.0


def system_metrics_interval() -> float:
    """$TITOK_SYSTEM_METRICS_S, else SYSTEM_METRICS_INTERVAL_S."""
    return float(os.environ.get(SYSTEM_METRICS_ENV, SYSTEM_METRICS_INTERVAL_S))


class SystemMetrics:
    """A daemon thread that samples this machine every `interval_s` seconds while the block runs, and once as it
    ends, and logs each sample through `logger` (a RunLogger of its own: the store's client is not shared between
    threads), so that samples taken while the store is down are buffered in the run folder like every other metric.
    Step = the sample's number. Metrics (MLflow's names and units): system/cpu_utilization_percentage (all cores,
    since the last sample), system/system_memory_usage_megabytes and _percentage, system/process_memory_rss_megabytes
    (this process), and per GPU of the node that NVML sees, system/gpu_<i>_utilization_percentage,
    _memory_usage_megabytes and _memory_usage_percentage (without NVML (nvidia-ml-py): memory only, from torch, for
    the GPUs this process sees). Without psutil it logs nothing and says so once; it never fails the job."""

    def __init__(self, logger: RunLogger, interval_s: float = SYSTEM_METRICS_INTERVAL_S):
        import threading

        self.logger, self.interval_s = logger, interval_s
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self._gpus: list = []

    def __enter__(self) -> SystemMetrics:
        try:
            import psutil
        except ImportError:
            log.warning("psutil is not installed: no system metrics (pip install psutil)")
            return self
        psutil.cpu_percent(interval=None)  # the first call starts the interval the next one measures
        self._gpus = _gpu_handles()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=30)

    def sample(self) -> dict[str, float]:
        import psutil

        memory = psutil.virtual_memory()
        out = {
            "cpu_utilization_percentage": psutil.cpu_percent(interval=None),
            "system_memory_usage_megabytes": memory.used / 1e6,
            "system_memory_usage_percentage": 100 * memory.used / memory.total,
            "process_memory_rss_megabytes": psutil.Process().memory_info().rss / 1e6,
        }
        for i, handle in enumerate(self._gpus):
            out.update(_gpu_sample(i, handle))
        return {SYSTEM_PREFIX + k: float(v) for k, v in out.items()}

    def _loop(self) -> None:
        while True:
            stopped = self._stop.wait(self.interval_s)
            try:
                self.logger.log_metrics(self.sample(), step=self.samples)
                self.samples += 1
            except Exception as err:  # a sampler must never take the training job down
                log.warning("system metrics: %s: %s", type(err).__name__, err)
            if stopped:
                return


def _gpu_handles() -> list:
    """NVML handles of the node's GPUs, else ("torch", index) for the GPUs torch sees, else []."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no NVML library, no driver, or nvidia-ml-py not installed
        pass
    import torch

    return [("torch", i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _gpu_sample(i: int, handle) -> dict[str, float]:
    if isinstance(handle, tuple):
        import torch

        free, total = torch.cuda.mem_get_info(handle[1])
        return {
            f"gpu_{i}_memory_usage_megabytes": (total - free) / 1e6,
            f"gpu_{i}_memory_usage_percentage": 100 * (total - free) / total,
        }
    import pynvml

    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return {
        f"gpu_{i}_utilization_percentage": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
        f"gpu_{i}_memory_usage_megabytes": memory.used / 1e6,
        f"gpu_{i}_memory_usage_percentage": 100 * memory.used / memory.total,
    }


def pending(folder: str | os.PathLike) -> bool:
    """Whether the buffer in `folder` holds entries the store has not taken."""
    buffer, acked = Path(folder) / BUFFER_FILE, Path(folder) / ACKED_FILE
    size = buffer.stat().st_size if buffer.exists() else 0
    return size > (json.loads(acked.read_text())["offset"] if acked.exists() else 0)


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
