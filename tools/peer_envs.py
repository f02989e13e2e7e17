"""Build the throw-away Python environments that run the peer libraries (peft, AdapterHub).

    python tools/peer_envs.py [--root .peer-envs] [NAME ...]    # NAME: peft, adapters (default: all)

Each environment is a venv at ``<root>/<NAME>`` holding torch==2.13.0 (installed first: it is the
CPU wheel on this machine's disk; any other torch would download a multi-GB CUDA build) and then
the pinned requirements in ``tools/peer-envs/<NAME>.txt``. It prints the environment's python.

Idempotent: an environment whose stamp (``<root>/<NAME>/.complete``) records the same
requirements is left alone. Atomic in effect: the stamp is written last, by rename, and only after
every install succeeded and the libraries import; a failed build removes its folder, and a folder
without a matching stamp (an interrupted build, older pins) is deleted and built again. The venv is
built in place rather than in a temporary folder renamed at the end, because a venv is not
relocatable (its scripts and activate file name its path).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "tools" / "peer-envs"
TORCH = "torch==2.13.0"
#: What must import in each environment before it counts as complete.
IMPORTS = {"peft": ["torch", "transformers", "peft", "safetensors"],
           "adapters": ["torch", "transformers", "adapters", "peft", "safetensors"]}


def spec(name: str) -> dict:
    """What an environment is made from; a change to any of it rebuilds the environment."""
    requirements = (REQUIREMENTS / f"{name}.txt").read_text()
    return {"python": sys.version.split()[0], "torch": TORCH,
            "requirements_sha256": hashlib.sha256(requirements.encode()).hexdigest()}


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def is_complete(env: Path, name: str) -> bool:
    stamp = env / ".complete"
    try:
        return json.loads(stamp.read_text())["spec"] == spec(name)
    except (OSError, ValueError, KeyError):
        return False


def write_stamp(env: Path, record: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".complete.", dir=env)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=1)
    os.replace(tmp, env / ".complete")


def run(*command: str | os.PathLike) -> str:
    """Run ``command`` and return its stdout; its stderr (pip's warnings) is shown only if it fails."""
    done = subprocess.run([str(c) for c in command], text=True, capture_output=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise subprocess.CalledProcessError(done.returncode, done.args)
    return done.stdout


def build(env: Path, name: str) -> dict:
    """Create the venv and install into it; return the stamp record (what was installed, how long)."""
    start = time.monotonic()
    run(sys.executable, "-m", "venv", env)
    python = python_of(env)
    pip = (python, "-m", "pip", "install", "-q", "--disable-pip-version-check")
    run(*pip, TORCH)
    run(*pip, "-r", REQUIREMENTS / f"{name}.txt")
    run(python, "-c", "import " + ", ".join(IMPORTS[name]))
    return {"spec": spec(name), "build_seconds": round(time.monotonic() - start, 1),
            "freeze": run(python, "-m", "pip", "freeze", "--all").split()}


def ensure(root: Path, name: str) -> Path:
    """The environment ``name`` under ``root``, built unless a complete one is there."""
    env = root / name
    if is_complete(env, name):
        return env
    if env.exists():
        print(f"peer_envs: removing incomplete or outdated {env}", file=sys.stderr)
        shutil.rmtree(env)
    print(f"peer_envs: building {env} ...", file=sys.stderr)
    try:
        record = build(env, name)
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)
        raise
    write_stamp(env, record)
    print(f"peer_envs: built {env} in {record['build_seconds']} s", file=sys.stderr)
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(IMPORTS)} (default: all)")
    parser.add_argument("--root", type=Path, default=REPO / ".peer-envs")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(IMPORTS))
    if unknown:
        parser.error(f"unknown environment(s) {unknown}; known: {list(IMPORTS)}")
    args.root.mkdir(parents=True, exist_ok=True)
    with open(args.root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builds of one environment at once would corrupt it
        for name in args.names or IMPORTS:
            print(python_of(ensure(args.root.resolve(), name)))


if __name__ == "__main__":
    main()
