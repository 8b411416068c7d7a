"""The ``gpjax`` command line: config resolution, overrides, policies, and the subcommands."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from gpjax import cli
from gpjax.incremental.configs import CONFIGS, get_config
from gpjax.incremental.policies import NFT, TFS, GrowPrune, Merged, NeST, make_policy


def test_configs_registry_has_every_experiment():
    for prefix in ("lenet300_mnist", "lenet5_mnist", "resnet18_mnist", "resnet18_imagenette",
                   "resnet18_imagenet", "ds2_hlstm_synthetic", "ds2_hlstm_an4",
                   "lenet300_mnist_classes"):
        assert prefix in CONFIGS and f"{prefix}_tiny" in CONFIGS
    for cfg in CONFIGS.values():
        for name, over in cfg.policies.items():
            make_policy(name, over)  # every override names a real field


def test_policy_defaults_follow_spec_mnist_protocol():
    g = GrowPrune()
    assert (g.new_epochs, g.all_epochs, g.learning_rate) == (15, 20, 0.1)
    assert TFS().epochs == 60 and NFT().epochs == 60 and NeST().epochs == 90
    assert Merged().new_epochs == 0
    plan = g.plan(3)
    assert plan.start == "inherit"
    assert [(p.kind, p.data, p.epochs) for p in plan.phases] == [
        ("grow", "new", 15), ("grow", "all", 20), ("prune", "all", 0)]
    assert [p.data for p in Merged().plan(3).phases] == ["all", "all"]
    assert TFS().plan(2).start == "fresh_dense" and NeST().plan(2).start == "fresh_sparse"
    assert NFT().plan(2).start == "carry_dense" and NFT().plan(2).carry_after == 0
    assert g.prune.recoverable and not g.nonrecoverable.recoverable


def test_resolve_overrides():
    cfg, pols = cli.resolve("lenet300_mnist", ["growprune", "tfs"],
                            ["prune.tolerance=0.25", "batch_size=64", "tfs:epochs=7",
                             "nonrecoverable=none", 'model_kwargs={"hidden": [20, 10]}'],
                            rounds=4)
    assert cfg.batch_size == 64 and cfg.rounds == 4 and cfg.model_kwargs == {"hidden": [20, 10]}
    g, t = pols
    assert g.prune.tolerance == 0.25 and t.prune.tolerance == 0.25
    assert t.epochs == 7 and g.nonrecoverable is None
    with pytest.raises(cli.UsageError, match="no field"):
        cli.resolve("lenet300_mnist", ["tfs"], ["no_such_field=1"])
    with pytest.raises(cli.UsageError, match="unknown policy"):
        cli.resolve("lenet300_mnist", ["sgd"], [])
    with pytest.raises(KeyError, match="unknown config"):
        get_config("nope")
    # The speech config overrides nonrecoverable.retrain_lr; the command line's
    # nonrecoverable=none must still switch non-recoverable pruning off (it used to come back).
    assert "nonrecoverable.retrain_lr" in get_config("ds2_hlstm_synthetic_small").policies["tfs"]
    _, (t,) = cli.resolve("ds2_hlstm_synthetic_small", ["tfs"], ["nonrecoverable=none"])
    assert t.nonrecoverable is None
    # A later, more specific key turns it back on from the default rule, with that field set.
    _, (t,) = cli.resolve("ds2_hlstm_synthetic_small", ["tfs"],
                          ["nonrecoverable=none", "tfs:nonrecoverable.max_iterations=0"])
    assert t.nonrecoverable is not None and t.nonrecoverable.max_iterations == 0


def test_epoch_scale():
    _, (g,) = cli.resolve("lenet300_mnist", ["growprune"], [], epoch_scale=0.2)
    assert (g.new_epochs, g.all_epochs, g.first_epochs) == (3, 4, 18)
    assert g.prune.max_retrain_epochs == 3  # the pruning rule is not an epoch budget
    m = cli.scale_epochs(Merged(), 0.1)
    assert m.new_epochs == 0 and m.all_epochs == 4
    assert dataclasses.replace(m, all_epochs=1).all_epochs == 1


def test_list_and_help(capsys):
    assert cli.main(["list"]) == 0
    assert "lenet300_mnist_tiny" in capsys.readouterr().out
    res = subprocess.run([sys.executable, "-m", "gpjax", "run", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--resume" in res.stdout and "--seeds" in res.stdout


def test_run_report_plot_class_incremental_heatmaps(tmp_path, capsys):
    """FIG. 5 config through the CLI, shortened: heatmaps per round, then report and plot."""
    out = tmp_path / "fig5"
    argv = ["run", "--config", "lenet300_mnist_classes_tiny", "--policy", "growprune",
            "--out", str(out), "--rounds", "2", "--no-progress", "--seeds", "0",
            "--set", "growprune:first_epochs=1", "--set", "prune.max_iterations=1",
            "--set", "nonrecoverable.max_iterations=1"]
    assert cli.main(argv) == 0
    run_dir = out / "growprune-seed0"
    assert (run_dir / "results.json").exists() and (run_dir / "results.csv").exists()
    for r in range(2):
        assert (run_dir / "heatmaps" / f"recoverable-round{r:02d}.png").exists()
        mask = np.load(run_dir / "heatmaps" / f"recoverable-round{r:02d}.npy")
        assert mask.shape[0] == 784
    assert (run_dir / "heatmaps" / "recoverable-all-rounds.png").exists()
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    assert "|" in capsys.readouterr().out
    assert cli.main(["plot", str(out), "--out", str(tmp_path / "plots")]) == 0
    assert any((tmp_path / "plots").glob("*.png"))


@pytest.mark.parametrize("args, says", [
    (["--set", "batch_size=abc"], "batch_size must be int, got 'abc'"),
    (["--set", "prune.percentile=150"], "PruneConfig.percentile must be in (0, 100)"),
    (["--set", "prune.percentile=abc"], "prune.percentile: expected float, got 'abc'"),
    (["--set", "epochs=-1"], "TFS.epochs must be in [0"),
    (["--set", "initial_chunks=20"], "initial_chunks (20) must be at most chunks (3)"),
    (["--rounds", "0"], "argument --rounds: must be positive"),
    (["--epoch-scale", "0"], "argument --epoch-scale: must be positive"),
    (["--seeds", "x"], "argument --seeds: expected comma-separated integers"),
    (["--config", "nosuch"], "unknown config 'nosuch'"),
])
def test_bad_run_arguments_refused_in_one_line_before_anything(args, says, tmp_path, capsys):
    """Each is refused at once (no data loaded, nothing written), in one line, exit 2."""
    argv = ["run", "--config", "lenet300_mnist_tiny", "--policy", "tfs", "--out",
            str(tmp_path / "out"), *args]
    if "--config" in args:
        argv[1:3] = []
    with pytest.raises(SystemExit) if args[0] in ("--rounds", "--epoch-scale", "--seeds") \
            else _nothing():
        code = cli.main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_diverged_training_is_one_line_naming_the_fix(tmp_path, capsys):
    """A NaN loss ends the run with exit 2 and one line that says how to avoid it."""
    code = cli.main(["run", "--config", "lenet300_mnist_tiny", "--policy", "tfs", "--rounds",
                     "1", "--set", "learning_rate=1e30", "--no-progress", "--out",
                     str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "training loss is nan" in err and "clip_norm" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_resume_of_a_run_saved_before_a_field_existed(tmp_path, capsys):
    """Checkpoints and rows written before ``prune.protection`` and ``optimizer.clip_norm``
    existed resume under today's defaults; a non-default value is still refused."""
    out = tmp_path / "out"
    base = ["run", "--config", "lenet300_mnist_tiny", "--policy", "tfs", "--no-progress",
            "--out", str(out)]
    assert cli.main([*base, "--rounds", "2"]) == 0
    run = out / "tfs-seed0"
    for f in [*run.rglob("gpjax_config.json"), run / "results.json"]:
        doc = json.loads(f.read_text())
        cfg = doc.get("metadata", doc)
        del cfg["policy"]["prune"]["protection"], cfg["experiment"]["optimizer"]["clip_norm"]
        f.write_text(json.dumps(doc))
    assert cli.main([*base, "--rounds", "2", "--resume"]) == 0, capsys.readouterr().err
    assert [r["round"] for r in json.loads((run / "results.json").read_text())["rows"]] == [0, 1]
    capsys.readouterr()
    assert cli.main([*base, "--rounds", "2", "--resume", "--set", "prune.protection=exclude"]) == 2
    assert "prune.protection" in capsys.readouterr().err


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code = cli.main(["run", "--config", "lenet300_mnist_tiny", "--policy", "tfs", "--out",
                     str(f / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a directory" in err and err.count("\n") == 1


def test_run_directory_lock_and_foreign_results(tmp_path):
    """A second writer of one run directory is refused; results of another config are never
    replaced without --overwrite (the run is refused before it starts)."""
    from gpjax.incremental import DirectoryLock, DirectoryLockedError, ResultsConflictError, run
    from gpjax.incremental.loop import run_config, run_dir
    from gpjax.report import write_rows
    cfg = get_config("lenet300_mnist_tiny")
    pol = make_policy("tfs")
    d = run_dir(tmp_path, pol, 0)
    with DirectoryLock(d, what="run"):
        with pytest.raises(DirectoryLockedError, match="being written by process"):
            run(cfg, pol, 0, tmp_path, progress=False)
    other = run_config(dataclasses.replace(cfg, batch_size=16), pol, 0)
    write_rows([{"policy": "tfs", "seed": 0, "round": 0, "test_error": 1.0}], d,
               metadata=other)
    before = (d / "results.json").read_bytes()
    with pytest.raises(ResultsConflictError, match="batch_size: old=16 new=32"):
        run(cfg, pol, 0, tmp_path, progress=False)
    code = cli.main(["run", "--config", "lenet300_mnist_tiny", "--policy", "tfs", "--out",
                     str(tmp_path)])
    assert code == 2 and (d / "results.json").read_bytes() == before


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_every_command_help_shows_an_example():
    ap = cli.parser()
    sub = next(a for a in ap._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    assert {"init", "update", "history", "evaluate", "promote", "export", "run", "report",
            "plot", "list"} <= set(sub.choices)
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "Example:" in text and f"gpjax {name}" in text, name


def test_compile_cache_defaults_to_the_data_dir_and_keeps_a_configured_one(tmp_path):
    """With no cache configured, the CLI's cache goes under the data directory; one set by
    JAX_COMPILATION_CACHE_DIR (as this suite sets it) is left as it is."""
    import os

    import jax

    assert cli.enable_compile_cache(tmp_path / "other") == jax.config.jax_compilation_cache_dir
    assert not (tmp_path / "other").exists()
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["GPJAX_DATA_DIR"] = str(tmp_path)
    code = "from gpjax.cli import enable_compile_cache; print(enable_compile_cache())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert res.stdout.strip() == str(tmp_path / "xla") and (tmp_path / "xla").is_dir()
