"""What a user sees at launch: bad input stops every rank cleanly, one W&B run per training run."""

import time

from tests.distributed.launch import COMMON, train


def test_bad_config_stops_every_rank_without_hanging(tmp_path):
    start = time.monotonic()
    run = train(tmp_path / "run", COMMON + ["parallel=tp2_pp2"], nprocs=2, check=False, timeout=120)
    assert run.returncode != 0
    assert run.output.count("config error: parallel: tp(2) × pp(2) = 4 does not divide world_size(2)") == 1
    assert "Traceback" not in run.output
    assert not (tmp_path / "run").exists(), "nothing may be written for a rejected config"
    assert time.monotonic() - start < 120


def test_truncated_data_file_is_refused_before_training(tmp_path, bundled_corpus):
    prefix = tmp_path / "corpus"
    (tmp_path / "corpus.idx").write_bytes(bundled_corpus.with_suffix(".idx").read_bytes())
    (tmp_path / "corpus.bin").write_bytes(bundled_corpus.with_suffix(".bin").read_bytes()[:1000])
    run = train(tmp_path / "run", COMMON + [f"data.path={prefix}"], nprocs=2, check=False, timeout=120)
    assert run.returncode != 0
    assert "config error: data.path:" in run.output and "truncated" in run.output
    assert "Traceback" not in run.output


def test_two_ranks_make_exactly_one_offline_wandb_run(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    overrides = [o for o in COMMON if not o.startswith("wandb.")] + ["wandb=offline", "parallel=dp"]
    run = train(tmp_path / "run", overrides, nprocs=2, extra_env={"HOME": str(home)})
    runs = sorted((run.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    records = list(runs[0].glob("run-*.wandb"))
    assert len(records) == 1 and records[0].stat().st_size > 1000
    assert len(run.train_rows) == 10


def test_wandb_disabled_writes_no_wandb_directory(tmp_path):
    run = train(tmp_path / "run", COMMON + ["wandb=disabled", "trainer.max_steps=10"], launcher="python")
    assert not (run.run_dir / "wandb").exists()
    assert len(run.train_rows) == 10
