"""Install Debian packages the tests need (SLURM, MariaDB, Chromium) when they are missing.

`python -m tests.infra.apt slurmctld chromium ...` installs what is missing; tests call `ensure(...)`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def missing(packages: list[str]) -> list[str]:
    out = []
    for pkg in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            out.append(pkg)
    return out


def ensure(packages: list[str]) -> None:
    """apt-get install the missing packages (root only); a clear error when that is impossible."""
    todo = missing(packages)
    if not todo:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"the tests need the Debian packages {todo}; install them with `sudo apt-get install -y {' '.join(todo)}`"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    update = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True)
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *todo]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed:\n{update.stderr[-2000:]}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        )


if __name__ == "__main__":
    ensure(sys.argv[1:])
