"""A real one-node Slurm cluster on localhost for tests: munged + slurmctld + slurmd, all state in a
temporary folder, non-default ports, stopped by their pid files."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_available() -> str | None:
    """None when usable, else why not."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if not shutil.which(b)
               and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        return f"Slurm/munge binaries not installed: {missing} (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd runs jobs as their user)"
    return None


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class LocalSlurm:
    def __init__(self, root: str, cpus: int = 2, memory_mb: int = 8000):
        self.root, self.cpus, self.memory = root, cpus, memory_mb
        self.host = socket.gethostname()
        self.conf = os.path.join(root, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def start(self) -> "LocalSlurm":
        for d in ("munge", "state", "spool", "log"):
            os.makedirs(self.path(d), exist_ok=True)
        os.chmod(self.path("munge"), 0o700)
        with open(self.path("munge", "munge.key"), "wb") as fh:
            fh.write(os.urandom(1024))
        os.chmod(self.path("munge", "munge.key"), 0o400)
        socket_path = self.path("munge", "munge.socket")
        subprocess.run([_sbin("munged"), "--force", f"--key-file={self.path('munge', 'munge.key')}",
                        f"--socket={socket_path}", f"--pid-file={self.path('munge', 'munged.pid')}",
                        f"--log-file={self.path('log', 'munged.log')}", f"--seed-file={self.path('munge', 'seed')}"],
                       check=True, capture_output=True)
        with open(self.conf, "w") as fh:
            fh.write(f"""ClusterName=mmkgc-test
SlurmctldHost={self.host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self.path('state')}
SlurmdSpoolDir={self.path('spool')}
SlurmctldPidFile={self.path('slurmctld.pid')}
SlurmdPidFile={self.path('slurmd.pid')}
SlurmctldLogFile={self.path('log', 'slurmctld.log')}
SlurmdLogFile={self.path('log', 'slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
JobCompType=jobcomp/none
NodeName={self.host} CPUs={self.cpus} RealMemory={self.memory} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        subprocess.run([_sbin("slurmctld"), "-f", self.conf], check=True, env=self.env, capture_output=True)
        subprocess.run([_sbin("slurmd"), "-f", self.conf], check=True, env=self.env, capture_output=True)
        self.wait_idle()
        return self

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mix"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"Slurm node never became idle; logs in {self.path('log')}")

    def wait_job(self, job_id: str, timeout: float = 600) -> str:
        """Wait for the job to leave the queue; return its final state (from sacct-less scontrol)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["scontrol", "show", "job", job_id], env=self.env, capture_output=True, text=True)
            state = next((tok.split("=", 1)[1] for tok in out.stdout.split() if tok.startswith("JobState=")), "")
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return state
            time.sleep(1)
        raise TimeoutError(f"job {job_id} did not finish in {timeout}s")

    def wait_array(self, job_id: str, tasks: int, timeout: float = 600) -> list[str]:
        """Wait for every task of an array job to finish; their final states."""
        deadline = time.time() + timeout
        final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
        while time.time() < deadline:
            out = subprocess.run(["scontrol", "show", "job", job_id], env=self.env, capture_output=True, text=True)
            states = [tok.split("=", 1)[1] for tok in out.stdout.split() if tok.startswith("JobState=")]
            if len(states) >= tasks and all(s in final for s in states):
                return states
            time.sleep(1)
        raise TimeoutError(f"array job {job_id} did not finish in {timeout}s")

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid", os.path.join("munge", "munged.pid")):
            try:
                with open(self.path(pid_file)) as fh:
                    os.kill(int(fh.read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        time.sleep(1)
