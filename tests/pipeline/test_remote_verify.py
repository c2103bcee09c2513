"""The DVC remote's `verify = true` (docs/tracking.md) catches an object corrupted in the remote.

A small project in tmp_path takes the repo's own `.dvc/config` (remote `local`, `verify = true`),
points that remote at a directory in tmp_path (`--local`, as the end-to-end test does, never the
real `../tunelab-dvc-remote`), pushes, has one object in the remote overwritten, loses its cache
and workspace copies, and pulls with real `dvc`. Without `verify` DVC trusts the remote's file
name and checks the corrupted bytes out with exit status 0 (dvc 3.67, 2026-12-02).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

GOOD = b"held-out prompt 1\nheld-out prompt 2\n"
CORRUPT = b"held-out prompt 1\nheld-out prompt X\n"  # same size: only the content hash can tell


def dvc(args: list[str], cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_pull_from_a_remote_holding_a_corrupted_object_fails(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{os.path.dirname(sys.executable)}:{env['PATH']}", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    project, remote = tmp_path / "project", tmp_path / "remote"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    assert dvc(["init", "-q"], project, env).returncode == 0
    shutil.copy(REPO / ".dvc/config", project / ".dvc/config")  # the remote settings under test
    assert dvc(["remote", "modify", "--local", "local", "url", str(remote)], project, env).returncode == 0
    assert "remote.local.verify=true" in dvc(["config", "--list"], project, env).stdout

    (project / "data").mkdir()
    (project / "data/heldout.txt").write_bytes(GOOD)
    (project / "data/other.txt").write_bytes(b"an intact file\n")
    (project / "solo.txt").write_bytes(b"a file tracked on its own\n")
    assert dvc(["add", "-q", "data", "solo.txt"], project, env).returncode == 0
    pushed = dvc(["push"], project, env)
    assert pushed.returncode == 0, pushed.stderr

    digest = hashlib.md5(GOOD).hexdigest()
    corrupted = remote / "files/md5" / digest[:2] / digest[2:]
    assert corrupted.is_file(), sorted(p.relative_to(remote) for p in remote.rglob("*"))
    corrupted.chmod(0o644)
    corrupted.write_bytes(CORRUPT)
    shutil.rmtree(project / ".dvc/cache")
    shutil.rmtree(project / "data")
    (project / "solo.txt").unlink()

    pulled = dvc(["pull"], project, env)
    output = pulled.stdout + pulled.stderr
    assert pulled.returncode != 0, f"dvc pull accepted a corrupted object:\n{output}"
    assert "failed to pull data" in output and "data" in output.split("Checkout failed")[-1], output
    assert not (project / "data").exists()  # the corrupted bytes never reach the workspace
    assert not (project / ".dvc/cache/files/md5" / digest[:2] / digest[2:]).exists()  # nor stay in the cache
    assert (project / "solo.txt").read_bytes() == b"a file tracked on its own\n"  # intact objects still arrive
