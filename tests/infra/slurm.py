"""A real single-node SLURM cluster with accounting, started by hand in a private state directory.

    with SlurmCluster() as cluster:
        os.environ.update(cluster.env)          # SLURM_CONF for sbatch/srun/sacct and submitit
        submitit.AutoExecutor(folder, cluster="slurm").update_parameters(slurm_partition=cluster.partition)

Daemons: munged (as user munge), MariaDB (as user mysql, 127.0.0.1 only), slurmdbd, slurmctld, slurmd,
each in the foreground in its own session, so the PID we record is the daemon itself. `stop()` cancels
the jobs, stops the daemons and then kills whatever else belongs to this cluster (`instance_processes`:
orphaned slurmstepds and job processes); the next `start()` does the same for clusters whose owner died
without `stop()`. Settings that mattered on this project's machines: no cgroups (proctrack/linuxproc, task/none;
jobs' memory limits enforced by SLURM's accounting poll, jobacct_gather/linux with OverMemoryKill),
KillWait=5 (submitit ignores SIGTERM), batch_sched_delay=0 (batch jobs start in under a second), accounting through
slurmdbd (without it submitit cannot see a cancelled job and waits forever).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MARKER = "TITOK_SLURM_INSTANCE"
PREFIX = "titok-slurm-"
# Unix socket paths are limited to 107 bytes, and munge/mysql need to traverse the path: a short shared dir.
# tmpfs: start-up of MariaDB and slurmdbd is fsync-bound (mariadb-install-db 0.5 s on tmpfs, 3-5 s on disk).
DEFAULT_PARENT = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path("/tmp")
MARIADB_OPTS = ["--no-defaults", "--innodb-log-file-size=16M"]  # the default 100 MB redo log would sit in RAM
DAEMON_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (PID 1 here reaps orphans lazily)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def _in_dir(pid: int, state_dir: Path) -> bool:
    """Whether the process's working directory is (or was, before deletion) inside state_dir."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
    except OSError:
        return False
    return cwd == str(state_dir) or cwd.startswith(f"{state_dir}/")


def instance_processes(state_dir: Path) -> list[int]:
    """PIDs of the live daemons and slurmstepds of the cluster in state_dir, and of its job processes.

    Daemons carry MARKER in their environment and run in the state dir. slurmstepd overwrites its environment
    with its process title, but keeps slurmd's working directory. Job processes have the cluster's SLURM_CONF
    and a SLURM_JOB_ID.
    """
    conf = str(state_dir / "slurm" / "slurm.conf")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        env = _environ(pid)
        ours = env.get(MARKER) == str(state_dir) or _in_dir(pid, state_dir)
        job = env.get("SLURM_CONF") == conf and "SLURM_JOB_ID" in env
        if (ours or job) and alive(pid):
            pids.append(pid)
    return pids


def _kill_and_wait(pids: list[int], timeout: float = 10.0) -> list[int]:
    """SIGKILL the given processes and wait until they are gone; returns those still alive."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def reap_stale(parent: Path = DEFAULT_PARENT) -> None:
    """Stop the processes and remove the state of clusters whose owning process died without stop().

    Only directories whose owner PID is dead are touched, so a cluster of a concurrent test session survives.
    """
    for state_dir in parent.glob(PREFIX + "*"):
        try:
            owner = int((state_dir / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and alive(owner):
            continue
        if owner is None and time.time() - state_dir.stat().st_mtime < 60:
            continue  # being created right now by someone else
        _kill_and_wait(instance_processes(state_dir))
        shutil.rmtree(state_dir, ignore_errors=True)


def _chown(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _hardware() -> tuple[str, str]:
    """(node name, hardware fields) from `slurmd -C`, e.g. 'CPUs=2 Boards=1 ... RealMemory=24105'."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    fields = line.split()
    name = fields[0].split("=", 1)[1]
    return name, " ".join(fields[1:])


class SlurmCluster:
    """A single-node SLURM cluster with slurmdbd accounting; `start()`/`stop()` or a context manager."""

    def __init__(
        self,
        parent: str | Path | None = None,
        partition: str = "debug",
        cluster_name: str = "titok",
        cred_expire_s: int = 5,
        keep_state: bool = False,
    ):
        self.parent = Path(parent) if parent is not None else DEFAULT_PARENT
        self.partition = partition
        self.cluster_name = cluster_name
        # cred_expire is also how long a requeued job waits before it may start again (default 120 s).
        self.cred_expire_s = cred_expire_s
        self.keep_state = keep_state
        self.root: Path | None = None
        self.env: dict[str, str] = {}
        self.node = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_pids: list[int] = []  # every daemon PID this instance ever started, for leak checks

    # ------------------------------------------------------------------ public API
    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sinfo, squeue, scontrol, sacct, ...) against this cluster."""
        env = {**os.environ, **self.env}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def start(self) -> SlurmCluster:
        if self.procs:
            raise RuntimeError("cluster already started")
        self.parent.mkdir(parents=True, exist_ok=True)
        reap_stale(self.parent)
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.parent))
        try:
            self._start()
        except BaseException as e:
            logs = self.logs()
            self.stop()
            if isinstance(e, Exception):
                raise RuntimeError(f"SLURM cluster failed to start: {e}\n{logs}") from e
            raise
        return self

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons this instance started (newest first) and any of its leftovers."""
        if self.root is None:
            return
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        # slurmstepd or job processes left behind (e.g. slurmd killed while a job ran)
        left = _kill_and_wait(instance_processes(self.root))
        self.procs = {}
        if left:
            raise RuntimeError(f"processes of the cluster in {self.root} survived SIGKILL: {left}")
        if not self.keep_state:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def logs(self, tail: int = 30) -> str:
        """The last lines of every daemon log, for error messages."""
        if self.root is None or not self.root.exists():
            return ""
        parts = []
        for path in sorted(self.root.glob("*/*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path}\n" + "\n".join(lines))
        return "\n".join(parts)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ start-up steps
    def _start(self) -> None:
        root = self.root
        root.chmod(0o755)  # munge and mysql must traverse it
        (root / "owner.pid").write_text(str(os.getpid()))
        munge_dir, db_dir, slurm_dir = root / "munge", root / "mysql", root / "slurm"
        for d, user in ((munge_dir, "munge"), (db_dir, "mysql"), (slurm_dir, "root")):
            d.mkdir(mode=0o755)
            _chown(d, user)
        for sub in ("state", "spool"):
            (slurm_dir / sub).mkdir()
        ctld_port, slurmd_port, dbd_port, db_port = free_ports(4)
        self.node, hardware = _hardware()
        conf = slurm_dir / "slurm.conf"
        self.env = {"SLURM_CONF": str(conf)}
        munge_sock = munge_dir / "munge.socket"
        auth_info = f"socket={munge_sock}"

        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        _chown(key, "munge")
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                f"--key-file={key}",
                f"--socket={munge_sock}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            user="munge",
        )

        datadir = db_dir / "data"
        db_sock = db_dir / "mysqld.sock"
        r = subprocess.run(
            [
                "mariadb-install-db",
                *MARIADB_OPTS,
                f"--datadir={datadir}",
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        self._spawn(
            "mariadbd",
            [
                "mariadbd",
                *MARIADB_OPTS,
                f"--datadir={datadir}",
                f"--socket={db_sock}",
                f"--pid-file={db_dir / 'mysqld.pid'}",
                f"--log-error={db_dir / 'mysqld.log'}",
                "--bind-address=127.0.0.1",
                f"--port={db_port}",
                "--skip-name-resolve",
            ],
            user="mysql",
        )
        self._wait(munge_sock.exists, 10, "munged socket")
        self._wait(db_sock.exists, 30, "MariaDB socket")
        password = os.urandom(12).hex()
        subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                f"--socket={db_sock}",
                "-u",
                "root",
                "-e",
                f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}';"
                "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';",
            ],
            check=True,
            capture_output=True,
            text=True,
        )

        dbd_conf = slurm_dir / "slurmdbd.conf"
        dbd_conf.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo={auth_info}",
                    f"DbdHost={self.node}",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={dbd_port}",
                    "SlurmUser=root",
                    f"PidFile={slurm_dir / 'slurmdbd.pid'}",
                    f"LogFile={slurm_dir / 'slurmdbd.log'}",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={db_port}",
                    "StorageUser=slurm",
                    f"StoragePass={password}",
                    "StorageLoc=slurm_acct_db",
                    "",
                ]
            )
        )
        dbd_conf.chmod(0o600)  # slurmdbd refuses a readable config (it holds the DB password)
        conf.write_text(
            "\n".join(
                [
                    f"ClusterName={self.cluster_name}",
                    f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo={auth_info},cred_expire={self.cred_expire_s}",
                    "CommunicationParameters=NoInAddrAny",
                    f"StateSaveLocation={slurm_dir / 'state'}",
                    f"SlurmdSpoolDir={slurm_dir / 'spool'}",
                    f"SlurmctldPidFile={slurm_dir / 'slurmctld.pid'}",
                    f"SlurmdPidFile={slurm_dir / 'slurmd.pid'}",
                    f"SlurmctldLogFile={slurm_dir / 'slurmctld.log'}",
                    f"SlurmdLogFile={slurm_dir / 'slurmd.log'}",
                    # no cgroups here: track processes by parentage, no task binding
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    # the memory limit without cgroups: each job step's memory is polled every minute and a step
                    # over its job's --mem is killed (sacct: FAILED; the job's log: "Exceeded job memory limit");
                    # PSS, not RSS: the pages DataLoader workers share with their parent count once
                    "JobAcctGatherType=jobacct_gather/linux",
                    "JobAcctGatherParams=OverMemoryKill,UsePss",
                    "JobAcctGatherFrequency=task=60",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "DefMemPerCPU=1024",
                    "SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1",
                    "KillWait=5",  # submitit ignores SIGTERM: the default 30 s would block the node after scancel
                    "JobRequeue=1",
                    "ReturnToService=2",
                    "MailProg=/bin/true",
                    "MpiDefault=none",
                    "AccountingStorageType=accounting_storage/slurmdbd",
                    "AccountingStorageHost=127.0.0.1",
                    f"AccountingStoragePort={dbd_port}",
                    f"AccountingStoragePass={munge_sock}",  # slurmdbd's own connection ignores AuthInfo
                    "JobCompType=jobcomp/none",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN",
                    f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        self._wait(
            lambda: self._try("sacctmgr", "-i", "add", "cluster", self.cluster_name),
            30,
            "slurmdbd accepting `sacctmgr add cluster`",
        )
        self._spawn("slurmctld", ["slurmctld", "-D"])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node])
        self._wait(lambda: self._try("sinfo", "-h", "-o", "%t", check_out="idle"), 30, "node idle in sinfo")
        self._wait(lambda: self._try("sacct", "-n", "-X"), 30, "sacct")

    def _spawn(self, name: str, cmd: list[str], user: str | None = None) -> None:
        """Start a foreground daemon in its own session; Popen.pid is the daemon itself (no wrapper shell)."""
        env = {"PATH": DAEMON_PATH, "LANG": "C.UTF-8", MARKER: str(self.root), **self.env}
        log_dir = self.root / ("munge" if user == "munge" else "mysql" if user == "mysql" else "slurm")
        with open(log_dir / f"{name}.out.log", "ab") as out:
            kwargs = {"user": user, "group": user, "extra_groups": []} if user else {}
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log_dir,
                start_new_session=True,
                **kwargs,
            )
        self.procs[name] = proc
        self.started_pids.append(proc.pid)

    def _try(self, *cmd: str, check_out: str | None = None) -> bool:
        r = self.run(*cmd, check=False, timeout=10)
        if r.returncode != 0:
            return False
        return check_out is None or r.stdout.strip() == check_out

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def _cancel_all_jobs(self) -> None:
        """scancel every job, then wait until none is left (KillWait=5 bounds a job that ignores SIGTERM)."""
        r = self.run("squeue", "-h", "-o", "%A", check=False, timeout=10)
        ids = r.stdout.split()
        if not ids:
            return
        self.run("scancel", *ids, check=False, timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = self.run("squeue", "-h", "-o", "%A", check=False, timeout=10)
            if r.returncode != 0 or not r.stdout.strip():
                return
            time.sleep(0.1)
