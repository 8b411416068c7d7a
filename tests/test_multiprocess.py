"""Several processes: two local CPU processes (gloo collectives, one device each) give the rows,
versions and files of one process with two devices; a killed multi-process update resumes to
the same version; inconsistent flags and an unreachable coordinator are refused in one line,
exit 2, before anything is written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpjax import cli
from gpjax.distributed import ProcessConfig, local_rows

TIMEOUT_S = 300  # each subprocess; a hang fails the test instead of the suite
TIME = ("created", "wall_time_s", "wall_time_total_s", "eval_time_s")
SETS = ["--set", "batch_size=32", "--set", "first_epochs=2", "--set", "new_epochs=1",
        "--set", "all_epochs=1", "--set", "grow_every=1", "--set", "prune.max_iterations=2",
        "--set", "prune.percentile=20", "--set", "nonrecoverable=none",
        "--set", "checkpoint_every=1",
        "--set", "checkpoint_interval_s=0"]
INIT = ["--model", "lenet300", "--model-kwargs", '{"hidden": [16, 8]}', *SETS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int = 1) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=", "--x=")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    return env


def _cmd(argv: list[str], rank: int | None = None, port: int | None = None) -> list[str]:
    extra = [] if rank is None else ["--coordinator", f"127.0.0.1:{port}", "--num-processes",
                                     "2", "--process-id", str(rank)]
    return [sys.executable, "-m", "gpjax.cli", *argv, "--no-progress", *extra]


def _start_two(argv: list[str]) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen(_cmd(argv, rank, port), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def two_processes(argv: list[str]) -> list[str]:
    """``gpjax ARGV`` as processes 0 and 1 of two; their outputs."""
    return _finish(_start_two(argv))


def two_devices(argv: list[str]) -> str:
    """``gpjax ARGV`` as one process with two (forced host) devices."""
    res = subprocess.run(_cmd(argv), env=_env(2), capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout


def _strip(manifest: dict) -> dict:
    m = json.loads(json.dumps(manifest))
    m.pop("integrity", None)  # digests of files that hold timestamps (test_store's _strip too)
    for k in TIME:
        m.pop(k, None)
        m["metrics"].pop(k, None)
    return m


def _rows(out: Path) -> list[dict]:
    rows = json.loads((out / "growprune-seed0" / "results.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k not in TIME} for r in rows]


def _files(path: Path) -> set[str]:
    """Every file under ``path`` but Orbax's array stores (laid out per process)."""
    return {str(p.relative_to(path)) for p in path.rglob("*")
            if p.is_file() and "arrays" not in p.relative_to(path).parts}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two 300-image MNIST parts and a 200-image test file."""
    from gpjax.data.mnist import load_mnist
    d = tmp_path_factory.mktemp("data")
    m = load_mnist()
    x, y = m.train
    for i in range(2):
        np.savez(d / f"part{i}.npz", x=x[i * 300:(i + 1) * 300], y=y[i * 300:(i + 1) * 300])
    np.savez(d / "test.npz", x=m.test[0][:200], y=m.test[1][:200])
    return d


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("flags,says", [
    (["--num-processes", "2"], "--num-processes given without --coordinator, --process-id"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2: must be at least 0 and below --num-processes 2"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "0", "--process-id", "0"],
     "--num-processes 0: must be at least 1"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "-1"],
     "--process-id -1: must be at least 0"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
     "expected HOST:PORT"),
])
@pytest.mark.parametrize("command", ["run", "init", "update"])
def test_inconsistent_process_flags_refused_before_anything(command, flags, says, tmp_path,
                                                            capsys):
    out = tmp_path / "out"
    argv = {"run": ["run", "--config", "lenet300_mnist_tiny", "--policy", "tfs", "--out",
                    str(out)],
            "init": ["init", str(out), "--model", "lenet300", "--data", "x.npz"],
            "update": ["update", str(out), "--data", "x.npz"]}[command]
    assert cli.main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and "Fix:" in err, err
    assert err.count("\n") == 1, err
    assert not out.exists()


def test_process_config_check_accepts_consistent_values():
    for cfg in (ProcessConfig(), ProcessConfig(auto=True),
                ProcessConfig("h:1", 2, 1), ProcessConfig("[::1]:80", 1, 0),
                ProcessConfig(None, 4, None, auto=True)):
        cfg.check()
    assert not ProcessConfig().enabled and ProcessConfig(auto=True).enabled


def test_local_rows_of_a_split_and_a_replicated_sharding():
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))
    assert local_rows(NamedSharding(mesh, P("batch")), (6, 3)) == slice(0, 6)
    assert local_rows(NamedSharding(mesh, P()), (5,)) == slice(0, 5)


@pytest.mark.parametrize("rank,says", [(1, "127.0.0.1:{port} is unreachable"),
                                       (0, "not all 2 processes joined the coordinator")])
def test_unreachable_coordinator_is_one_line_within_the_timeout(rank, says, files, tmp_path):
    """Process 1 whose coordinator never answers, or process 0 whose peer never comes: exit 2
    after --coordinator-timeout, one ``gpjax: error`` line naming the problem and the fix, no
    store made."""
    store = tmp_path / "store"
    port = _free_port()  # nothing listens there (process 0 listens itself)
    cmd = _cmd(["init", str(store), *INIT, "--data", str(files / "part0.npz"),
                "--coordinator-timeout", "2"], rank, port)
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("gpjax: error")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert says.format(port=port) in lines[0] and "Fix:" in lines[0], lines
    assert not store.exists()


def test_distributed_outside_a_cluster_is_one_line(files, tmp_path):
    """``--distributed`` where JAX detects no cluster (no Slurm, Open MPI or TPU pod)."""
    env = {k: v for k, v in _env().items()
           if not k.startswith(("SLURM_", "OMPI_", "PMI_", "TPU_", "JAX_COORDINATOR"))}
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "gpjax.cli", "init", str(store), *INIT, "--data",
           str(files / "part0.npz"), "--distributed", "--coordinator-timeout", "5"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("gpjax: error")]
    assert len(lines) == 1 and "cannot join the processes" in lines[0], res.stderr[-2000:]
    assert "Fix:" in lines[0] and not store.exists()


# ------------------------------------------------------------------------------ equivalence


@pytest.mark.slow
def test_run_two_processes_give_the_rows_of_two_devices(tmp_path):
    """``gpjax run``: 2 processes x 1 device == 1 process x 2 devices (time fields aside);
    only process 0 wrote rows (one results.json, complete)."""
    argv = ["run", "--config", "lenet300_mnist_tiny", "--policy", "growprune", "--rounds", "1",
            "--set", 'model_kwargs={"hidden": [16, 8]}', "--set", "nonrecoverable=none"]
    two_devices([*argv, "--out", str(tmp_path / "one")])
    outs = two_processes([*argv, "--out", str(tmp_path / "two")])
    # Each process counted the parameters of its own copy of the masks: the same.
    summary = [[ln for ln in o.splitlines() if ln.startswith("growprune seed 0: 1 rounds")]
               for o in outs]
    assert len(summary[0]) == 1 and summary[0] == summary[1], outs
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(one) == 1 and one == two
    assert {r["devices"] for r in two} == {2}
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


@pytest.fixture(scope="module")
def stores(files, tmp_path_factory):
    """A store made (init on part 0, update with part 1) by one process with two devices and
    by two processes, and a copy of the two-process store at version 0."""
    import shutil
    root = tmp_path_factory.mktemp("stores")
    data = ["--test", str(files / "test.npz")]
    for name, launch in (("one", two_devices), ("two", two_processes)):
        launch(["init", str(root / name), *INIT, "--data", str(files / "part0.npz"), *data])
        if name == "two":
            shutil.copytree(root / name, root / "base")
        launch(["update", str(root / name), "--data", str(files / "part1.npz"), *data])
    return root


@pytest.mark.slow
def test_store_two_processes_give_the_versions_of_two_devices(stores):
    from gpjax.incremental.store import ModelStore
    one, two = ModelStore.open(stores / "one"), ModelStore.open(stores / "two")
    assert one.versions() == two.versions() == [0, 1] and two.latest() == 1
    for v in (0, 1):
        assert _strip(one.manifest(v)) == _strip(two.manifest(v))
    assert _files(stores / "one") == _files(stores / "two")
    a, b = one.load(1), two.load(1)
    for x, y in zip(*(__import__("jax").tree.leaves((m.params, m.masks)) for m in (a, b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_killed_two_process_update_resumes_to_the_same_version(stores, files, tmp_path):
    """SIGKILL process 1 after the update's first checkpoint (process 0 is then stopped too,
    as a scheduler ends a job step): the store keeps version 0 only, and both restarted with
    ``--resume`` give the version of the uninterrupted update."""
    import shutil

    from gpjax.incremental.store import ModelStore
    store = Path(shutil.copytree(stores / "base", tmp_path / "s"))
    argv = ["update", str(store), "--data", str(files / "part1.npz"), "--test",
            str(files / "test.npz")]
    procs = _start_two(argv)
    ckpts = store / "work" / "checkpoints"
    deadline = time.time() + TIMEOUT_S
    try:
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
                break
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), "the update ended before a checkpoint"
    finally:
        for p in (procs[1], procs[0]):
            p.send_signal(signal.SIGKILL)
            p.wait()
    s = ModelStore.open(store)
    assert s.versions() == [0] and s.latest() == 0 and (store / "work").exists()
    two_processes([*argv, "--resume"])
    s = ModelStore.open(store)
    assert s.versions() == [0, 1] and s.latest() == 1
    assert _strip(s.manifest(1)) == _strip(ModelStore.open(stores / "two").manifest(1))
    assert not (store / "work").exists()
