"""benchmarks/table1.sh: its CPU dry run, cut by the deadline into a packed workdir, then a
second sitting resumed from that pack to Table 1, the exported model and the figures."""

import json
import subprocess
import sys
import tarfile

import pytest

from benchmarks import table1
from helpers import REPO_ROOT, child_env, write_mock_cache


# The first sitting's deadline. The dry run keeps 45 s of it to stop and pack
# (benchmarks/table1.py): train.py gets 20 s to start and finish a step (measured on a
# loaded 2-core host: its first step 4-15 s after it starts), the views what the stop leaves
# of the 45 s (measured: 4-9 s). Each second of train.py's share is spent (it trains until
# the deadline), hence no more.
DEADLINE_S = 65


def _sitting(tmp_path, name, *args):
  command = ["bash", str(REPO_ROOT / "benchmarks" / "table1.sh"), str(tmp_path / name),
             "--dry-run", "--work", str(tmp_path / f"work_{name}"),
             "--carry", str(tmp_path / "no_carry"), *args]
  env = child_env(TFDS_DATA_DIR=str(tmp_path / "tfds"), PYTHON=sys.executable)
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  with open(tmp_path / name / table1.REPORT) as f:
    return result, json.load(f)


def _check_files(out):
  sizes = {p.name: p.stat().st_size for p in out.iterdir()}
  assert len(sizes) <= table1.MAX_FILES
  assert max(sizes.values()) < table1.MAX_FILE_MB * 2**20
  return set(sizes)


@pytest.mark.slow
def test_a_sitting_cut_by_its_deadline_packs_the_run_and_the_next_finishes_it(tmp_path):
  """About 45 s: two sittings of every phase (train, evaluate, views, export, pack), each a
  child process, the first lasting until its deadline (DEADLINE_S) cuts its training."""
  write_mock_cache(tmp_path / "tfds")
  # The recipe's 100,000 steps cannot end before the deadline: training is stopped by SIGTERM.
  first, report = _sitting(tmp_path, "first", "--steps", "100000", "--deadline",
                           str(DEADLINE_S))
  assert first.returncode == table1.EXIT_PACKED, first.stdout + first.stderr
  assert report["status"] == "packed"
  phases = {p["name"]: p for p in report["phases"]}
  assert phases["train"]["status"] == "stopped" and phases["train"]["rc"] == 143
  assert "stopped by SIGTERM at step" in phases["train"]["log_tail"]
  assert "evaluate" not in phases and phases["pack"]["status"] == "finished"
  step = report["step"]
  assert step >= 1 and report["elapsed_s"] < DEADLINE_S
  assert _check_files(tmp_path / "first") == {
      "table1.json", "workdir.tar.gz", "samples.png", "posterior.png", "training_curves.png"}

  second, report = _sitting(tmp_path, "second", "--steps", str(step + 2), "--resume",
                            str(tmp_path / "first" / table1.PACK))
  assert second.returncode == table1.EXIT_COMPLETE, second.stdout + second.stderr
  assert report["status"] == "complete" and report["resumed_from_step"] == step
  assert report["step"] == step + 2
  train_log = (tmp_path / "work_second" / "logs" / "train.log").read_text()
  assert f"Resumed from step {step}" in train_log
  assert [r["cell"] for r in report["results"]["results"]] == ["1:1", "2:3"]
  assert _check_files(tmp_path / "second") == {
      "table1.json", "results.md", "bound_vs_T.png", "kl_vs_T.png", "samples.png",
      "posterior.png", "training_curves.png", "model.tar"}
  assert all(p["status"] == "finished" for p in report["phases"])
  with tarfile.open(tmp_path / "second" / table1.MODEL) as tar:
    names = set(tar.getnames())
    model = json.load(tar.extractfile("model/model.json"))
  assert {"model/params.msgpack", "model/config.json", "model/results.json"} <= names
  assert model["step"] == step + 2


def test_results_of_a_sitting_are_never_overwritten_and_a_bad_pack_is_refused(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "table1.json").write_text("{}")
  with pytest.raises(SystemExit) as exit_info:
    table1.main([str(out), "--dry-run"])
  assert exit_info.value.code == table1.EXIT_USAGE
  assert (out / "table1.json").read_text() == "{}"

  bad = tmp_path / "bad.tar.gz"
  with tarfile.open(bad, "w:gz") as tar:
    tar.add(__file__, arcname="notes.py")
  with pytest.raises(ValueError, match="not a workdir packed by table1"):
    table1.unpack(str(bad), str(tmp_path / "w"))
  (tmp_path / "held").mkdir()
  (tmp_path / "held" / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="already holds a run"):
    table1.unpack(str(bad), str(tmp_path / "held"))


def test_pack_keeps_the_newest_checkpoint_and_what_a_resume_needs(tmp_path):
  workdir = tmp_path / "w"
  for step in (2, 4):
    (workdir / "checkpoints" / str(step)).mkdir(parents=True)
    (workdir / "checkpoints" / str(step) / "x").write_text(str(step))
  (workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1").mkdir()
  (workdir / "images").mkdir()
  (workdir / "images" / "a.png").write_bytes(b"png")
  for name in ("config.json", "metrics.jsonl"):
    (workdir / name).write_text("{}")
  (workdir / "eval").mkdir()
  (workdir / "eval" / "results.json").write_text("{}")
  packed = table1.pack(str(workdir), str(tmp_path / "p.tar.gz"))
  assert packed["step"] == 4
  with tarfile.open(tmp_path / "p.tar.gz") as tar:
    files = {m.name for m in tar.getmembers() if m.isfile()}
  assert files == {"config.json", "metrics.jsonl", "eval/results.json", "checkpoints/4/x"}
  assert table1.unpack(str(tmp_path / "p.tar.gz"), str(tmp_path / "u")) == 4
  assert (tmp_path / "u" / "checkpoints" / "4" / "x").read_text() == "4"
