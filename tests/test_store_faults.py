"""The model store and ``gpjax run`` under disk faults.

Integrity: every version records the digest of each checkpoint file and of its manifest;
``gpjax verify`` names each damaged file; every command tolerates one damaged version (history
marks it, the others refuse it in one line naming the file and the fix, writing nothing);
``LATEST`` missing or dangling is one line listing the versions; out of space, permissions and
read-only file systems are one line (exit 2), also when wrapped in Orbax/TensorStore errors.

Fault injection: each filesystem step of writing a version (the Orbax checkpoint as a whole and
the rename that completes it, every directory made, file opened for writing, fsync, rename, the
``LATEST`` swap, removing ``work/``) in turn fails with ENOSPC, or is where the process dies.
A death is simulated in the process (a subprocess per step would cost seconds of imports each):
from the step on, every patched filesystem call (``os.*``, ``shutil.rmtree``, the project's
``open``) raises again without touching the disk, so no cleanup handler changes anything and
the disk holds what a SIGKILL there would leave; one real SIGKILL in a subprocess checks it.
After each: ``verify`` passes, ``LATEST`` names a complete version, and the next command
(``--resume``) gives the version an uninterrupted update gives. The same for ``gpjax run``'s
round-end writes (models, the round checkpoint, ``results.json``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from test_store import MODEL_FILE, POLICY, _snapshot, _strip

import gpjax._files
from gpjax import cli
from gpjax._cli_common import disk_fault
from gpjax.incremental import integrity
from gpjax.incremental.checkpoint import RoundCheckpointer
from gpjax.incremental.store import ModelStore, Recipe, StoreError

N = 1000  # examples per part; with width 32, the shapes of test_store's (compiled programs shared)
# No non-recoverable model: a resumed update is then restore, evaluate and write (fast).
QUICK = {**{k: v for k, v in POLICY.items() if not k.startswith("nonrecoverable")},
         "nonrecoverable": "none"}


class _Stop(Exception):
    """Stops an update just before it writes its version (makes the "pending" template)."""


class _Killed(BaseException):
    """The simulated SIGKILL: not an Exception, so no ``except Exception`` handles it."""


class Disk:
    """Counts the filesystem steps on paths under ``root`` made while ``armed`` and acts at
    step ``at`` (1-based): ``"fail"`` raises ENOSPC there; ``"kill"`` raises :class:`_Killed`
    there and at every later filesystem call (nothing more reaches the disk)."""

    MUTATING = ("fsync", "replace", "rename", "unlink", "remove", "rmdir", "mkdir", "chmod")

    def __init__(self, at: int | None = None, mode: str = "fail", *, root: Path) -> None:
        self.at, self.mode, self.root = at, mode, str(root)
        self.armed, self.dead = False, False
        self.steps: list[str] = []

    def step(self, what: str) -> None:
        if self.dead:
            raise _Killed(what)
        if not self.armed or self.root not in what:
            return
        self.steps.append(what)
        if len(self.steps) == self.at:
            if self.mode == "kill":
                self.dead = True
                raise _Killed(what)
            path = what.split(" ", 1)[-1].split(" -> ")[-1]
            raise OSError(errno.ENOSPC, "No space left on device", path)

    @contextlib.contextmanager
    def installed(self, arm_in: list[tuple[type, str]]):
        """Wraps the filesystem calls, and arms the counter inside the methods ``arm_in``."""
        disk = self

        def wrap(name, real):
            def call(*a, **k):
                target = a[0] if a else ""
                if name == "fsync" and isinstance(target, int):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/self/fd/{target}")
                if name == "mkdir" and os.path.isdir(target) and not disk.dead:
                    return real(*a, **k)  # EEXIST, not a write (``mkdir(exist_ok=True)``)
                if name in ("replace", "rename"):
                    target = f"{a[0]} -> {a[1]}"
                disk.step(f"{name} {target}")
                return real(*a, **k)
            return call

        def write_open(file, mode="r", *a, **k):
            if any(c in mode for c in "wax+"):
                disk.step(f"write {file}")
            return open(file, mode, *a, **k)

        def armed(real):
            def method(*a, **k):
                disk.armed = True
                try:
                    return real(*a, **k)
                finally:
                    disk.armed = False
            return method

        real_save, real_rmtree = RoundCheckpointer.save, shutil.rmtree

        def save(self_, step, *a, **k):
            disk.step(f"checkpoint {self_.directory}/{step}")
            return real_save(self_, step, *a, **k)

        def rmtree(path, *a, **k):
            disk.step(f"rmtree {path}")
            return real_rmtree(path, *a, **k)

        with contextlib.ExitStack() as stack:
            for name in self.MUTATING:
                stack.enter_context(mock.patch.object(os, name, wrap(name, getattr(os, name))))
            stack.enter_context(mock.patch.object(gpjax._files, "open", write_open, create=True))
            stack.enter_context(mock.patch.object(RoundCheckpointer, "save", save))
            stack.enter_context(mock.patch.object(shutil, "rmtree", rmtree))
            for cls, name in arm_in:
                stack.enter_context(mock.patch.object(cls, name, armed(getattr(cls, name))))
            yield self


STORE_STEPS = [(ModelStore, "_write_version"), (ModelStore, "_publish")]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from gpjax.data.mnist import load_mnist
    d = tmp_path_factory.mktemp("user")
    (d / "usermodels.py").write_text(MODEL_FILE)
    x, y = load_mnist().train
    for i in range(3):
        np.savez(d / f"part{i}.npz", x=x[i * N:(i + 1) * N], y=y[i * N:(i + 1) * N])
    return d


def _reuse(store: ModelStore, path: Path) -> ModelStore:
    """``store``'s model, task and compiled code on the store at ``path`` (a copy)."""
    s = copy.copy(store)
    s.path = Path(path)
    return s


@pytest.fixture(scope="module")
def made(files, tmp_path_factory):
    """``two``: versions 0 and 1. ``pending``: ``two`` plus an update with part 2 whose training
    is done and checkpointed in ``work/`` but whose version is not written. ``expected``: the
    version 2 that resuming ``pending`` gives."""
    root = tmp_path_factory.mktemp("faults")
    s = ModelStore.create(root / "two", model="usermodels:TinyMLP", model_kwargs={"width": 32},
                          policy_overrides=QUICK, search_path=files,
                          recipe=Recipe(batch_size=64, checkpoint_every=0,
                                        prune_checkpoint_every=0))
    s.init(files / "part0.npz", progress=False)
    s.update(files / "part1.npz", progress=False)
    pending = _reuse(s, shutil.copytree(s.path, root / "pending"))
    with mock.patch.object(ModelStore, "_write_version", side_effect=_Stop), \
            pytest.raises(_Stop):
        pending.update(files / "part2.npz", progress=False)
    assert any(p.name.isdigit() for p in (pending.path / "work" / "checkpoints").iterdir())
    ref = _reuse(s, shutil.copytree(pending.path, root / "ref"))
    expected = ref.update(files / "part2.npz", resume=True, progress=False)
    return {"two": s, "pending": pending, "expected": expected, "ref": ref}


def _names(path: Path) -> set[str]:
    """The store's files and folders down to ``versions/NNNN/*`` (lock file aside)."""
    return {str(p.relative_to(path)) for p in [*path.glob("*"), *path.glob("versions/*"),
                                               *path.glob("versions/*/*")]
            if p.name != ".gpjax.lock"}


def _after_fault(s: ModelStore, made: dict, files: Path, label: str) -> None:
    """verify passes, LATEST names a complete version, versions 0 and 1 are as they were,
    and ``update --resume`` gives the expected version 2 and leaves a clean store."""
    res = s.verify()
    assert res.ok, (label, res)
    assert s.latest() in (1, 2) and s.latest() in s.versions(), label
    for v in (0, 1):
        assert _snapshot(s.path / "versions" / f"{v:04d}") == \
            _snapshot(made["two"].path / "versions" / f"{v:04d}"), label
    got = s.update(files / "part2.npz", resume=True, progress=False)
    assert _strip(got) == _strip(made["expected"]), label
    assert s.latest() == 2 and s.verify().ok and not (s.path / "work").exists(), label
    assert _names(s.path) == _names(made["ref"].path), label


# ----------------------------------------------------------------------------- integrity


def test_versions_record_digests_and_verify_passes(made, capsys):
    s = made["ref"]
    res = s.verify()
    assert res.ok and [c.status for c in res.versions] == ["ok"] * 3
    man = s.manifest(2)
    files = man["integrity"]["files"]
    vdir = s.path / "versions" / "0002"
    on_disk = {p.relative_to(vdir).as_posix() for p in (vdir / "checkpoint").rglob("*")
               if p.is_file()}
    assert set(files) == on_disk and res.versions[2].files == len(files) > 3
    assert (vdir / "manifest.sha256").read_text().strip() == \
        integrity.sha256_file(vdir / "manifest.json")
    # Loading reads the files without changing them.
    s.load(2)
    assert s.verify().ok
    assert cli.main(["verify", str(s.path)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == 3


def _largest_data_file(vdir: Path) -> Path:
    return max((p for p in (vdir / "checkpoint").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


@pytest.fixture
def damaged(made, tmp_path):
    """A copy of the 3-version store: version 2's largest checkpoint file has 256 bytes
    overwritten; version 1's manifest is truncated."""
    s = _reuse(made["two"], shutil.copytree(made["ref"].path, tmp_path / "s"))
    f = _largest_data_file(s.path / "versions" / "0002")
    with open(f, "r+b") as h:
        h.seek(min(100, f.stat().st_size - 256))
        h.write(b"\xff" * 256)
    m = s.path / "versions" / "0001" / "manifest.json"
    m.write_bytes(m.read_bytes()[:200])
    return s, f.relative_to(s.path).as_posix()


def test_verify_names_every_damaged_version_and_file(damaged, capsys):
    s, data_file = damaged
    res = s.verify()
    assert not res.ok and [c.version for c in res.damaged] == [1, 2]
    assert res.versions[2].damage[0].file == data_file
    assert res.versions[1].damage[0].file == "versions/0001/manifest.json"
    assert s.verify(0).ok and not s.verify(2).ok
    assert cli.main(["verify", str(s.path)]) == 1
    got = capsys.readouterr()
    assert data_file in got.out and "versions/0001/manifest.json" in got.out
    assert "--version 0" in got.err and "Traceback" not in got.err
    assert cli.main(["verify", str(s.path), "--version", "0"]) == 0


def test_commands_tolerate_damaged_versions(damaged, files, capsys):
    s, data_file = damaged
    before = _snapshot(s.path)
    hist = s.history()
    assert [h["version"] for h in hist] == [0, 1, 2]
    assert "unreadable" not in hist[0] and hist[0]["metrics"]["params"] > 0
    assert hist[1]["unreadable"].startswith("versions/0001/manifest.json")
    assert hist[2]["unreadable"].startswith(data_file)
    assert cli.main(["history", str(s.path)]) == 0
    out = capsys.readouterr().out
    assert "unreadable" in out and data_file in out
    test = str(files / "part0.npz")
    commands = [["evaluate", str(s.path), "--data", test],
                ["evaluate", str(s.path), "--data", test, "--version", "1"],
                ["export", str(s.path), "--out", str(s.path.parent / "artifact")],
                ["update", str(s.path), "--data", str(files / "part2.npz"), "--no-progress"],
                ["promote", str(s.path), "--version", "2"]]
    for cmd in commands:
        assert cli.main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, (cmd, err)
        assert "is damaged" in err and "gpjax promote" in err and "--from 0" in err, err
        assert (data_file if "--version" not in cmd or "2" in cmd
                else "versions/0001/manifest.json") in err, (cmd, err)
    with pytest.raises(StoreError, match="is damaged"):
        s.load()
    assert _snapshot(s.path) == before and not (s.path / "work").exists()
    assert not (s.path.parent / "artifact").exists()
    # The healthy version stays usable; `promote` to it and `update --from` it work.
    assert s.evaluate(files / "part0.npz", version=0)["test_error"] < 90
    assert cli.main(["promote", str(s.path), "--version", "0"]) == 0
    assert s.latest() == 0 and s.load().version == 0


def test_update_from_a_healthy_version(damaged, files):
    s, _ = damaged
    man = s.update(files / "part1.npz", parent=0, progress=False)
    assert man["version"] == 3 and man["parent"] == 0 and s.latest() == 3
    assert [e["added_in"] for e in man["data"]] == [0, 3]
    assert s.verify(3).ok


def test_latest_missing_or_dangling_is_one_line(made, tmp_path, files, capsys):
    s = _reuse(made["two"], shutil.copytree(made["two"].path, tmp_path / "s"))
    (s.path / "LATEST").unlink()
    for text in (None, "0007\n"):
        if text:
            (s.path / "LATEST").write_text(text)
        assert cli.main(["evaluate", str(s.path), "--data", str(files / "part0.npz")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "versions 0, 1" in err and "gpjax promote" in err
        assert "gpjax init" not in err
        assert ("names version 7" if text else "is missing") in err
        assert not s.verify().ok and s.verify().problems
        assert cli.main(["update", str(s.path), "--data", str(files / "part2.npz")]) == 2
        assert "gpjax promote" in capsys.readouterr().err and not (s.path / "work").exists()
    assert cli.main(["history", str(s.path)]) == 0
    assert cli.main(["promote", str(s.path), "--version", "1"]) == 0
    assert s.latest() == 1 and s.verify().ok
    spec = s.path / "store.json"
    spec.write_text(spec.read_text()[:40])
    assert cli.main(["history", str(s.path)]) == 2
    err = capsys.readouterr().err
    assert "store.json is damaged" in err and "backup" in err and err.count("\n") == 1


def test_old_store_without_digests_opens_and_reports(made, tmp_path, files, capsys):
    """A store written before digests existed: no ``integrity``, no sidecar."""
    s = _reuse(made["two"], shutil.copytree(made["two"].path, tmp_path / "old"))
    for v in (0, 1):
        d = s.path / "versions" / f"{v:04d}"
        (d / "manifest.sha256").unlink()
        m = json.loads((d / "manifest.json").read_text())
        del m["integrity"]
        (d / "manifest.json").write_text(json.dumps(m))
    res = s.verify()
    assert res.ok and [c.status for c in res.versions] == ["no_digests"] * 2
    assert [h["version"] for h in s.history()] == [0, 1]
    assert s.evaluate(files / "part0.npz")["version"] == 1
    assert cli.main(["verify", str(s.path)]) == 0
    assert capsys.readouterr().out.count("no digests") == 2
    # Damage that only Orbax notices is still one line naming the version and the fix.
    f = _largest_data_file(s.path / "versions" / "0001")
    f.write_bytes(f.read_bytes()[:16])
    assert cli.main(["evaluate", str(s.path), "--data", str(files / "part0.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "version 1" in err and "--version 0" in err, err


# ----------------------------------------------------------------------------- disk faults


@pytest.mark.parametrize("text,code", [
    ("RESOURCE_EXHAUSTED: Error writing local file \"/s/work/x/d/abc\": No space left on "
     "device [OS error 28]", errno.ENOSPC),
    ("FAILED_PRECONDITION: Error writing \"/s/versions/.staging-0002/x\": Permission denied",
     errno.EACCES),
    ("OSError: [Errno 30] Read-only file system: '/s/LATEST'", errno.EROFS),
])
def test_disk_faults_inside_library_errors_are_recognised(text, code):
    try:
        try:
            raise ValueError(text)
        except ValueError as inner:
            raise RuntimeError("orbax: save failed") from inner
    except RuntimeError as e:
        got = disk_fault(e)
    assert got is not None and got.errno == code and got.path.startswith("/s/")
    assert disk_fault(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating")) is None
    assert disk_fault(ValueError("bad shape")) is None


def _recorded_steps(made, files, tmp_path) -> list[str]:
    s = _reuse(made["two"], shutil.copytree(made["pending"].path, tmp_path / "record"))
    with Disk(root=s.path).installed(STORE_STEPS) as disk:
        s.update(files / "part2.npz", resume=True, progress=False)
    return disk.steps


def _outcome(command) -> str:
    """How ``command()`` ended: "done", "killed" or the errno name of its OSError."""
    try:
        command()
    except _Killed:
        return "killed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "done"


def _kept(step: str, mode: str) -> bool:
    """The steps injected: every step of the store's own code; of Orbax's inside the
    checkpoint write (its temporary folders), only the rename that completes it (a fault
    anywhere before it leaves the same unfinished staging folder). Not ``chmod``; nor, for a
    kill, ``fsync`` (a kill there leaves on disk what a kill at the next step leaves)."""
    if step.startswith("chmod") or (mode == "kill" and step.startswith("fsync")):
        return False
    return ".orbax-checkpoint-tmp" not in step or re.search(
        r"^rename \S+\.orbax-checkpoint-tmp -> \S+/\d+$", step) is not None


def test_each_step_of_writing_a_version_fails_or_dies(made, files, tmp_path):
    steps = _recorded_steps(made, files, tmp_path)
    kinds = {s.split(" ")[0] for s in steps}
    assert {"checkpoint", "mkdir", "write", "fsync", "replace", "rmtree"} <= kinds, steps
    assert any(s.endswith("/LATEST") for s in steps if s.startswith("replace"))
    assert len([s for s in steps if _kept(s, "fail")]) >= 20, steps
    for mode in ("fail", "kill"):
        for k, step in [(k, s) for k, s in enumerate(steps, 1) if _kept(s, mode)]:
            label = f"{mode} at step {k}: {step}"
            s = _reuse(made["two"], shutil.copytree(made["pending"].path,
                                                     tmp_path / f"{mode}{k}"))
            with Disk(k, mode, root=s.path).installed(STORE_STEPS):
                outcome = _outcome(lambda s=s: s.update(files / "part2.npz", resume=True,
                                                        progress=False))
            # A kill always stops it; a failed step of the clean-up after LATEST moved (the
            # removal of work/) does not fail the update.
            assert outcome == ("killed" if mode == "kill" else "ENOSPC") or (
                mode == "fail" and outcome == "done" and s.latest() == 2), (label, outcome)
            _after_fault(s, made, files, label)
            shutil.rmtree(s.path)


def test_disk_full_in_the_cli_is_one_line_and_resumable(made, files, tmp_path, capsys):
    """ENOSPC while the version is written: one line naming the path and the fix (exit 2);
    a plain update is refused, ``--resume`` finishes it."""
    d = shutil.copytree(made["pending"].path, tmp_path / "s")
    cmd = ["update", str(d), "--data", str(files / "part2.npz"), "--no-progress"]
    with Disk(3, "fail", root=d).installed(STORE_STEPS):
        assert cli.main([*cmd, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpjax: error: no space left on device: ") and err.count("\n") == 1
    assert str(d) in err and "free space" in err and "--resume" in err, err
    assert cli.main(cmd) == 2 and "--resume" in capsys.readouterr().err
    assert cli.main([*cmd, "--resume"]) == 0
    assert ModelStore.open(d).verify().ok and ModelStore.open(d).latest() == 2


def test_read_only_store_and_init_on_a_full_disk(made, files, tmp_path, capsys):
    """Permission denied on promote: one line; ENOSPC during init: no half-made store."""
    s = shutil.copytree(made["two"].path, tmp_path / "s")
    before = _snapshot(s)
    with mock.patch.object(os, "replace", side_effect=PermissionError(
            errno.EACCES, "Permission denied", str(s / "LATEST"))):
        assert cli.main(["promote", str(s), "--version", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpjax: error: permission denied: ") and err.count("\n") == 1
    assert str(s / "LATEST") in err and "writable" in err
    assert _snapshot(s) == before
    new = tmp_path / "new"
    with Disk(1, "fail", root=new).installed([(ModelStore, "_make")]):
        code = cli.main(["init", str(new), "--model", "usermodels:TinyMLP", "--data",
                         str(files / "part0.npz"), "--no-progress"])
    assert code == 2 and "no space left on device" in capsys.readouterr().err
    assert not new.exists()


def test_real_sigkill_between_version_and_latest(made, files, tmp_path):
    """A real SIGKILL (subprocess) right after the version folder's rename, before LATEST
    moves: the store's LATEST still names version 1 and ``--resume`` finishes version 2."""
    d = shutil.copytree(made["pending"].path, tmp_path / "s")
    harness = (
        "import os, signal, sys\n"
        "from gpjax import cli\n"
        "from gpjax.incremental.store import ModelStore\n"
        "publish = ModelStore._publish\n"
        "ModelStore._publish = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(files), str(Path(cli.__file__).parents[1])])}
    proc = subprocess.run([sys.executable, "-c", harness, "update", str(d), "--data",
                           str(files / "part2.npz"), "--resume", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    s = _reuse(made["two"], d)
    assert s.versions() == [0, 1, 2] and s.latest() == 1 and (d / "work").exists()
    _after_fault(s, made, files, "real SIGKILL before LATEST")


# ----------------------------------------------------------------------------- gpjax run

RUN_TIMING = {"wall_time_s", "eval_time_s"}


@pytest.fixture(scope="module")
def run_made(tmp_path_factory):
    """A 2-round tiny run stopped at the end of its last round, before its round-end writes
    (models, the round's "done" checkpoint, results.json); and the rows resuming it gives."""
    from gpjax.incremental import build, get_config, make_policy, run
    from gpjax.incremental.loop import _Run
    cfg = dataclasses.replace(get_config("lenet300_mnist_tiny"), rounds=2, checkpoint_every=0,
                              prune_checkpoint_every=0)
    exp = build(cfg, 0)
    pol = make_policy("tfs", cfg.policies["tfs"])
    root = tmp_path_factory.mktemp("runs")
    real = _Run.save_models

    def stop_in_round_1(self, r, *a, **k):
        if r == 1:
            raise _Stop
        return real(self, r, *a, **k)

    with mock.patch.object(_Run, "save_models", stop_in_round_1), pytest.raises(_Stop):
        run(exp, pol, 0, root / "pending", progress=False, release_compiled_at=None)
    shutil.copytree(root / "pending", root / "ref")
    rows = run(exp, pol, 0, root / "ref", resume=True, progress=False, release_compiled_at=None)
    return {"exp": exp, "policy": pol, "root": root, "rows": rows,
            "dir": lambda out: Path(out) / "tfs-seed0"}


RUN_STEPS_IN = "save_models", "save", "write_rows"


def test_each_round_end_write_of_a_run_fails_or_dies(run_made, tmp_path):
    """Each step of a run's round-end writes fails (ENOSPC) or is where the run dies; the
    files left are readable (results.json whole, round 0's models and results intact) and
    ``--resume`` gives the rows of an uninterrupted run."""
    from gpjax.incremental import run
    from gpjax.incremental.loop import _Run, load_round_models
    from gpjax.report import load_rows

    def resume(out):
        return run(run_made["exp"], run_made["policy"], 0, out, resume=True, progress=False,
                   release_compiled_at=None)

    arm = [(_Run, name) for name in RUN_STEPS_IN]
    rec = shutil.copytree(run_made["root"] / "pending", tmp_path / "record")
    with Disk(root=rec).installed(arm) as disk:
        resume(rec)
    steps = disk.steps
    assert any(s.startswith("replace") and s.endswith("/results.json") for s in steps), steps
    want = [{k: v for k, v in r.items() if k not in RUN_TIMING} for r in run_made["rows"]]
    for mode in ("fail", "kill"):
        # results.csv: written the way results.json is (one atomic write), not repeated here.
        for k, step in [(k, s) for k, s in enumerate(steps, 1)
                        if _kept(s, mode) and "results.csv" not in s]:
            label = f"{mode} at step {k}: {step}"
            out = shutil.copytree(run_made["root"] / "pending", tmp_path / f"{mode}{k}")
            d = run_made["dir"](out)
            with Disk(k, mode, root=out).installed(arm):
                outcome = _outcome(lambda out=out: resume(out))
            assert outcome in ("killed" if mode == "kill" else "ENOSPC", "done"), label
            old = load_rows(d, on_error="raise")  # whole: round 0's rows, or both rounds'
            assert [r["round"] for r in old] in ([0], [0, 1]), label
            assert load_round_models(d, 0)["round"] == 0, label
            rows = resume(out)
            assert [{k_: v for k_, v in r.items() if k_ not in RUN_TIMING} for r in rows] \
                == want, label
            assert [r["round"] for r in load_rows(d, on_error="raise")] == [0, 1], label
            assert load_round_models(d, 1)["round"] == 1, label
            shutil.rmtree(out)


ORBAX_ENOSPC = ('RESOURCE_EXHAUSTED: Error writing local file "{}/x/d/0a1b": No space left on '
                'device [OS error 28]')


@pytest.mark.parametrize("command", ["run", "export", "update"])
def test_cli_front_door_maps_wrapped_disk_faults(command, made, files, tmp_path, capsys):
    """A disk fault wrapped in a library's error, raised where each command writes: one line
    with the path and the fix, exit 2, no traceback."""
    out = tmp_path / "out"

    def fail(*a, **k):
        try:
            raise ValueError(ORBAX_ENOSPC.format(out))
        except ValueError as e:
            raise RuntimeError("orbax save failed") from e

    if command == "run":
        argv = ["run", "--config", "lenet300_mnist_tiny", "--policy", "tfs", "--out", str(out),
                "--no-progress"]
        patches = [mock.patch("gpjax.incremental.experiment.build", lambda *a: None),
                   mock.patch("gpjax.incremental.loop.run", fail)]
    elif command == "export":
        argv = ["export", str(made["two"].path), "--out", str(out)]
        patches = [mock.patch("gpjax.export.export_from_state", fail)]
    else:
        argv = ["update", str(made["two"].path), "--data", str(files / "part2.npz")]
        patches = [mock.patch.object(ModelStore, "update", fail)]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpjax: error: no space left on device: ") and err.count("\n") == 1
    assert f"{out}/x/d/0a1b" in err and "free space" in err and "Traceback" not in err, err
    assert ("--resume" in err) == (command == "run"), err
