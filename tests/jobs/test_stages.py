"""The stage runner (rdance.jobs.stages) with a stand-in entrypoint: stages run in order with the
folders they name, a rerun skips finished stages, a failed or preempted stage resumes where it
stopped (its log and time line telling the attempts apart), the ETA is a range until this
machine's speed is measured, a second job in a workdir in use stops at once, and settings that
changed or a misspelt key are errors before anything runs."""
import io
import json
import os
import re
import subprocess
import sys

import pytest

from rdance.core import status
from rdance.jobs import stages as st

FAKE = "tests.jobs.fake_stage"
CONFIG = "tests/jobs/fake_config.py"


def two_stages(**b_overrides):
    return [st.Stage("a", "first", FAKE, CONFIG, {"value": 2.0}, estimate_s=2),
            st.Stage("b", "second", FAKE, CONFIG, {"source": "{stage:a}/export", **b_overrides}, estimate_s=3)]


def run(tmp_path, stages, **kwargs):
    distinct, lookup = st.resolve(stages, lambda s: str(tmp_path / s.name))
    out = io.StringIO()
    runner = st.Runner(distinct, str(tmp_path / "logs"), out=out, **kwargs)
    try:
        return runner.run(), out.getvalue(), lookup
    except st.StageError as e:
        e.output = out.getvalue()
        raise


def launches(workdir) -> int:
    path = os.path.join(workdir, "launches")
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0


def test_runs_in_order_then_skips_on_rerun(tmp_path):
    runs, out, _ = run(tmp_path, two_stages())
    assert [r.name for r in runs] == ["a", "b"] and not any(r.skipped for r in runs)
    assert "stage 1/2 a: first" in out and "stage 2/2 b: second" in out
    assert "[a] step 3/3  loss 0.5  ETA 0:00:00  | stages ETA" in out
    assert "not absl's" not in out                                   # only progress lines are echoed
    assert "not absl's" in (tmp_path / "logs" / "a.log").read_text()  # the log has everything
    argv = json.loads((tmp_path / "b" / "launches").read_text())
    assert f"--config.source={tmp_path / 'a'}/export" in argv and f"--workdir={tmp_path / 'b'}" in argv
    done = json.loads((tmp_path / "b" / "DONE.json").read_text())
    assert done["stage"] == "b" and done["wall_s"] > 0 and len(done["hash"]) == 16

    runs, out, _ = run(tmp_path, two_stages())
    assert all(r.skipped for r in runs)
    assert "stage 1/2 a: finished earlier" in out and "skipped" in out
    assert launches(tmp_path / "a") == launches(tmp_path / "b") == 1


def test_the_eta_leaves_out_stages_finished_earlier(tmp_path):
    slow = st.Stage("a", "first", FAKE, CONFIG, {"value": 2.0}, estimate_s=1000)
    run(tmp_path, [slow])
    new = st.Stage("c", "third", FAKE, CONFIG, {"value": 3.0}, estimate_s=3)
    _, out, _ = run(tmp_path, [new, slow])
    assert "stage 1/2 c: third (about 0:00:03 to 0:00:05); elapsed 0:00:00, ETA 0:00:03 to 0:00:05" in out, out


def test_the_first_eta_is_a_range_from_the_budgets_machine(tmp_path):
    """Budgets timed on another CPU are no promise here: the console names both machines and gives
    a range until a stage has finished on this one, then one figure scaled by its measured speed.
    (Stage a pauses after each step, so that the ETA echoed with a line is that step's.)"""
    _, out, _ = run(tmp_path, [st.Stage("a", "first", FAKE, CONFIG, {"value": 2.0, "pause": 0.5}, estimate_s=2),
                               two_stages()[1]])
    lines = out.splitlines()
    assert lines[0] == (f"this machine: {st.cpu_model()}; the stage budgets were timed on 2 idle cores of an AMD "
                        "EPYC, so the ETA is a range (budget to budget x1.7) until a stage has finished here")
    if os.path.isfile("/proc/cpuinfo"):
        model = next(x for x in open("/proc/cpuinfo") if x.startswith("model name")).split(":", 1)[1].strip()
        assert st.cpu_model().startswith(model + ", ")
    assert lines[1] == ("stage 1/2 a: first (about 0:00:02 to 0:00:03); elapsed 0:00:00, ETA 0:00:05 to 0:00:08; "
                        f"log {tmp_path / 'logs' / 'a.log'}")
    assert "[a] step 1/3  loss 0.5  ETA 0:00:02  | stages ETA 0:00:05 to 0:00:07" in out   # 2 + 3 to 2 + 5.1
    second = next(x for x in lines if x.startswith("stage 2/2 b: second"))
    assert re.fullmatch(r"stage 2/2 b: second \(about \d:\d\d:\d\d\); elapsed \S+, ETA \d:\d\d:\d\d; log .*", second)


def test_a_failed_stage_resumes_where_it_stopped(tmp_path):
    with pytest.raises(st.StageError, match=r"stage b failed \(exit status 3\).*b.log.*resumes"):
        run(tmp_path, two_stages(fail_at=3))
    assert not (tmp_path / "b" / "DONE.json").exists() and (tmp_path / "b" / "PARTIAL.json").exists()
    assert (tmp_path / "b" / "progress").read_text() == "2"
    runs, out, _ = run(tmp_path, two_stages(fail_at=3))
    assert [r.skipped for r in runs] == [True, False]
    assert "[b] resuming from" in out and "[b] step 3/3" in out and "[b] step 1/3" not in out
    assert [json.loads(x)["step"] for x in open(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3]
    assert not (tmp_path / "b" / "PARTIAL.json").exists()   # its time went into DONE.json's wall_s


def test_a_resumed_stage_tells_its_attempts_apart(tmp_path):
    """After a failed attempt the done line leads with this attempt's time, which fits within the
    job's elapsed time, and names all the stage's time beside it; the log marks where each attempt
    starts, so the earlier traceback is not read as the new run's."""
    stages = two_stages(fail_at=3) + [st.Stage("c", "third", FAKE, CONFIG, {"value": 3.0}, estimate_s=10)]
    with pytest.raises(st.StageError, match=r"stage b failed \(exit status 3\) after 0:00:0\d; "):
        run(tmp_path, stages)
    (tmp_path / "b" / "PARTIAL.json").write_text(json.dumps({"wall_s": 281.0, "attempts": 1}))  # a 4:41 attempt
    runs, out, _ = run(tmp_path, stages)
    line = next(x for x in out.splitlines() if x.startswith("stage 2/3 b: done"))
    this, total, elapsed = re.fullmatch(r"stage 2/3 b: done in (\S+) \((\S+) with 1 earlier attempt\); "
                                        r"elapsed (\S+), ETA \S+ to \S+", line).groups()
    assert this <= elapsed and total == "0:04:4" + total[-1] and this < "0:01:00", line
    # Finishing a resumed stage says nothing of this machine's speed: the next ETA is still a range.
    assert "stage 3/3 c: third (about 0:00:10 to 0:00:17); elapsed " in out
    done = json.loads((tmp_path / "b" / "DONE.json").read_text())
    assert done["attempts"] == 2 and done["wall_s"] >= 281 and runs[1].attempts == 2 and runs[1].wall_s >= 281

    log = (tmp_path / "logs" / "b.log").read_text()
    first = re.match(r"===== stage b, attempt 1, started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d.* =====\n\$ .*-m "
                     r"tests\.jobs\.fake_stage ", log)
    assert first and "earlier output above" not in first[0]
    second = re.search(r"\n\n===== stage b, attempt 2, started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d.*; earlier output "
                       r"above =====\n\$ .*-m tests\.jobs\.fake_stage .*\n", log)
    assert second, log
    assert "step 2/3" in log[:second.start()] and "step 2/3" not in log[second.end():]   # attempt 1's lines above
    assert "resuming from" in log[second.end():] and "step 3/3" in log[second.end():]
    runs, _, _ = run(tmp_path, stages)                                 # skipped: the log gets no header
    assert runs[1].skipped and runs[1].attempts == 2 and (tmp_path / "logs" / "b.log").read_text() == log


# Another job's hold on a workdir's lock, in a bare process (importing rdance takes seconds).
HOLD_LOCK = ("import sys, filelock\nlock = filelock.FileLock(sys.argv[1])\nlock.acquire()\n"
             "print('locked', flush=True)\nsys.stdin.read()\n")


def test_a_second_job_in_a_workdir_stops_at_once_and_a_killed_one_blocks_nothing(tmp_path):
    from rdance.run import demo
    lock = tmp_path / "JOB.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        message = (f"another job is running in {tmp_path} (it holds the lock {lock}): wait for it to finish, "
                   "or use another --workdir")
        with pytest.raises(st.StageError) as error:
            demo.run(st.load_config("experiments/demo.py:ci"), str(tmp_path), out=io.StringIO())
        assert str(error.value) == message
        assert os.listdir(tmp_path) == ["JOB.lock"]                   # it stopped before any stage began
    finally:
        holder.kill()                                                   # SIGKILL: no cleanup runs
        holder.wait()
    assert holder.returncode == -9 and lock.exists()                  # the file stays; the flock went with it
    with st.job_lock(str(tmp_path)) as path:
        assert path == str(lock)
        runs, _, _ = run(tmp_path, two_stages())
    assert [r.skipped for r in runs] == [False, False]


def test_a_preempted_stage_is_not_finished(tmp_path):
    """An entrypoint stopped by SIGTERM saves, writes PREEMPTED and exits 75: not done; the error
    names the checkpoint the marker names, and the rerun resumes it."""
    with pytest.raises(st.StageError) as error:
        run(tmp_path, two_stages(preempt_at=2))
    marker = json.loads((tmp_path / "b" / "PREEMPTED").read_text())
    assert marker["step"] == 1 and marker["checkpoint"] == f"{tmp_path / 'b'}/1"
    assert str(error.value) == (f"stage b was stopped by SIGTERM and saved a checkpoint ({tmp_path / 'b'}/1, "
                                "step 1): rerun the same command to resume it")
    assert not (tmp_path / "b" / "DONE.json").exists()
    runs, _, _ = run(tmp_path, two_stages(preempt_at=2))
    assert (tmp_path / "b" / "DONE.json").exists() and launches(tmp_path / "b") == 2


def test_the_child_eta_comes_from_progress_json_not_the_log(tmp_path):
    """The stand-in logs 'ETA 0:00:02' after step 1 of 3 but writes a rate of 0.5 steps/s to its
    progress.json (ETA 4 s): the job's ETA is 4 + the next stage's 3 to 5.1 s. A progress.json an
    earlier attempt left is not read."""
    (tmp_path / "a").mkdir()
    status.write_progress(str(tmp_path / "a"), "train", 1, 1000, 0.001)     # stale: ETA 999000 s
    runs, out, _ = run(tmp_path, [st.Stage("a", "first", FAKE, CONFIG, {"rate": 0.5, "pause": 0.5}, estimate_s=2),
                                  two_stages()[1]])
    assert "[a] step 1/3  loss 0.5  ETA 0:00:02  | stages ETA 0:00:07 to 0:00:09" in out, out
    assert "resuming" not in out and "277:" not in out
    record = json.loads((tmp_path / "a" / "progress.json").read_text())
    assert record["step"] == 3 and record["total"] == 3 and record["eta_s"] == 0


def test_changed_settings_and_bad_keys_fail_before_running(tmp_path):
    run(tmp_path, two_stages())
    with pytest.raises(st.StageError, match=r"holds a finished 'a' stage made with other settings"):
        run(tmp_path, [st.Stage("a", "first", FAKE, CONFIG, {"value": 3.0})] + two_stages()[1:])
    # b names a, so a changed a changes b's hash too (an input's hash, not its path)
    with pytest.raises(st.StageError, match="unknown config key 'valu'"):
        run(tmp_path, [st.Stage("c", "third", FAKE, CONFIG, {"valu": 1.0})])
    with pytest.raises(st.StageError, match="not a float"):
        run(tmp_path, [st.Stage("c", "third", FAKE, CONFIG, {"value": "many"})])
    with pytest.raises(st.StageError, match="names stage"):
        st.resolve([st.Stage("c", "x", FAKE, CONFIG, {"source": "{stage:nowhere}/x"})], lambda s: str(tmp_path))
    assert launches(tmp_path / "a") == 1 and not (tmp_path / "c").exists()


def test_hashes_follow_inputs_and_identical_stages_merge(tmp_path):
    stages = two_stages() + [st.Stage("a2", "first again", FAKE, CONFIG, {"value": "2.0"}),
                             st.Stage("b2", "second", FAKE, CONFIG, {"source": "{stage:a2}/export"})]
    distinct, lookup = st.resolve(stages, lambda s: str(tmp_path / s.name))
    assert [s.name for s in distinct] == ["a", "b"]                 # a2 == a ("2.0" is parsed as 2.0)
    assert lookup["a2"] is lookup["a"] and lookup["b2"] is lookup["b"]
    moved, _ = st.resolve(two_stages(), lambda s: str(tmp_path / "elsewhere" / s.name))
    assert [s.hash for s in moved] == [s.hash for s in distinct]    # hashes do not depend on folders
    other, _ = st.resolve([st.Stage("a", "first", FAKE, CONFIG, {"value": 5.0})] + two_stages()[1:],
                          lambda s: str(tmp_path / s.name))
    assert other[1].hash != distinct[1].hash


def test_copy_overrides_and_command_line():
    assert st.parse_assignments("a.b=1; c=x,y ;", "w") == {"a.b": "1", "c": "x,y"}
    with pytest.raises(st.StageError, match="not KEY=VALUE"):
        st.parse_assignments("a.b", "w")
    config = st.apply_overrides(st.load_config("experiments/gen_smoke.py"),
                                {"train.steps": "7", "model.axes_dims_rope": "(4, 6, 6)",
                                 "train.async_checkpoints": "false", "optim.learning_rate": "3e-4"}, "here")
    assert config.train.steps == 7 and config.model.axes_dims_rope == (4, 6, 6)
    assert config.train.async_checkpoints is False and config.optim.learning_rate == 3e-4
    assert st.flag_value((1, -1, 1)) == "(1,-1,1)" and st.flag_value((3,)) == "(3,)"


def test_clock_scales_the_estimates_by_the_speed_so_far():
    clock = st.Clock([10, 20, 30])
    assert clock.eta(0, None, 4.0) == 6 + 50
    assert clock.eta_text(0, None, 0.0) == "0:01:00 to 0:01:42" and clock.estimate_text(10) == "0:00:10 to 0:00:17"
    assert clock.eta_text(0, 4.0, 6.0) == "0:00:54 to 0:01:29"     # the child's own ETA, then the budgets
    clock.finished(10, 20.0)                        # twice as slow as estimated
    assert clock.eta(1, 5.0, 1.0) == 5 + 60
    assert clock.eta(1, None, 10.0) == 30 + 60
    assert clock.eta_text(1, None, 10.0) == "0:01:30" and clock.estimate_text(20) == "0:00:40"


def test_demo_stages_follow_the_rm_paradigm_and_data():
    from rdance.run import demo
    from rdance.jobs.stages import load_config
    config = load_config("experiments/demo.py:ci")
    stages = {s.name: s for s in demo.build_stages(config)}
    assert list(stages) == ["generator", "pairs", "vlm_small", "rm_small", "bank_small", "finetune_small", "vlm_large",
                            "rm_large", "bank_large", "finetune_large", "finetune_control", "evaluate"]
    for size in ("small", "large"):
        rm = stages[f"rm_{size}"]
        assert rm.overrides["data.eval_sets"] == "in_domain=world,samples={stage:pairs}/eval.jsonl"
        assert rm.overrides["rm.pretrained"] == f"{{stage:vlm_{size}}}/export"
    assert stages["vlm_small"].config == "experiments/vlm_smoke.py:small"
    assert stages["vlm_small"].overrides["model.text_hidden"] == 16      # the CI variant's own small size

    config.rm.extra = "rm.paradigm=pointwise"     # scored without references: no bank
    stages = {s.name: s for s in demo.build_stages(config)}
    assert "bank_small" not in stages and "bank_large" not in stages
    assert stages["finetune_large"].copy == stages["finetune_control"].copy == {}
    assert "pointwise" in stages["rm_large"].title

    config.rm.train_data = "pairs"
    with pytest.raises(st.StageError, match="needs training pairs"):
        demo.build_stages(config)
    config.pairs.set.pairs.num_prompts = 4
    assert {s.name: s for s in demo.build_stages(config)}["rm_small"].overrides["data.train"] == \
        "{stage:pairs}/train.jsonl"
    config.rm.train_data, config.rm.pairs_share = "mix", 0.25
    assert {s.name: s for s in demo.build_stages(config)}["rm_large"].overrides["data.train"] == \
        "world@0.75|{stage:pairs}/train.jsonl@0.25"
    config.rm.pairs_share = 1.0
    with pytest.raises(st.StageError, match="rm.pairs_share=1.0: the share of judged sample pairs"):
        demo.build_stages(config)
    config.rm.train_data = "mine"
    with pytest.raises(st.StageError, match="use 'recipe'"):
        demo.build_stages(config)
    config.rm.train_data, config.finetune.extra = "recipe", "algo=rwr"
    with pytest.raises(st.StageError, match="only ReFL reads: with finetune algo 'rwr' add --config.control=false"):
        demo.build_stages(config)
    config.control = False
    assert "finetune_control" not in [s.name for s in demo.build_stages(config)]
    config.order = "small,huge"
    with pytest.raises(st.StageError, match="order='small,huge': name one or more of the sizes large, small"):
        demo.build_stages(config)
