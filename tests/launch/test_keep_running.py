"""keep-running against a fake gcloud that plays a spot slice's life: created, preempted,
recreated, finished; and a job that fails on a healthy slice."""

SLICE = ["--name=rd", "--project=rdance-test", "--zone=us-east5-a", "--accelerator=v5p-16"]
ARGS = ["keep-running", *SLICE, "--spot", "--repo=https://github.com/example/rdance.git",
        "--poll-seconds=0", "--", "rdance.run.train_toy", "--config=experiments/toy.py",
        "--workdir=gs://rdance-test/toy"]

NOT_FOUND = {"rc": 1, "stderr": "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource "
                                "'projects/rdance-test/locations/us-east5-a/nodes/rd' was not found\n"}


def state(s):
    return {"stdout": s + "\n"}


def workers(*states):
    return {"stdout": "".join(f"rdance-job train_toy t1v-n-0-w-{i}: {s}\n" for i, s in enumerate(states))}


SCRIPT_KINDS = [("rdance-job", "status"), ("install -q -e '.[tpu]'", "bootstrap"),
                ("-m rdance.run.train_toy", "run"), ("kill -TERM", "stop")]


def kinds(calls):
    """Name each call: describe, create, delete, or for ssh what its script does."""
    return [call[3] if call[3] != "ssh" else
            next(kind for marker, kind in SCRIPT_KINDS if marker in call[-1]) for call in calls]


def test_relaunches_after_preemption_until_the_job_finishes(gcloud, launch):
    gcloud.reply([
        (["tpu-vm describe"], [NOT_FOUND, state("READY"), state("READY"), state("PREEMPTED"),
                               NOT_FOUND, state("READY"), state("READY"), state("READY")]),
        (["tpu-vm ssh", "rdance-job"], [workers("not started", "not started"),
                                        workers("running", "running"),
                                        workers("not started", "not started"),
                                        workers("running", "preempted"),
                                        workers("exited 0", "exited 0")]),
    ])
    result = launch(*ARGS, env=gcloud.env)
    assert result.returncode == 0, result.stderr
    assert kinds(gcloud.calls()) == [
        "describe", "create",                          # no slice: create it
        "describe", "status", "bootstrap", "run",      # fresh slice: bootstrap and start the job
        "describe", "status",                          # running
        "describe", "delete",                          # preempted: delete ...
        "describe", "create",                          # ... and create again
        "describe", "status", "bootstrap", "run",      # start again: it resumes from its workdir
        "describe", "status",                          # one worker still running
        "describe", "status",                          # all done
    ]
    assert "--spot" in gcloud.calls()[1]
    assert "train_toy finished on all 2 workers (2 start(s) by this loop)" in result.stderr


def test_a_job_sigtermed_on_a_healthy_slice_is_started_again_there(gcloud, launch):
    gcloud.reply([
        (["tpu-vm describe"], [state("READY")]),
        (["tpu-vm ssh", "rdance-job"], [workers("preempted", "preempted"), workers("exited 0", "exited 0")]),
    ])
    result = launch(*ARGS, env=gcloud.env)
    assert result.returncode == 0, result.stderr
    assert kinds(gcloud.calls()) == ["describe", "status", "bootstrap", "run", "describe", "status"]


def test_a_job_that_ended_before_the_loop_began_is_started_again(gcloud, launch):
    """Maybe it finished with fewer steps, or failed before a fix: it runs (and resumes) again."""
    gcloud.reply([
        (["tpu-vm describe"], [state("READY")]),
        (["tpu-vm ssh", "rdance-job"], [workers("exited 0", "exited 1"), workers("exited 0", "exited 0")]),
    ])
    result = launch(*ARGS, env=gcloud.env)
    assert result.returncode == 0, result.stderr
    assert kinds(gcloud.calls()) == ["describe", "status", "bootstrap", "run", "describe", "status"]


def test_a_failing_job_is_stopped_and_its_status_returned(gcloud, launch):
    gcloud.reply([
        (["tpu-vm describe"], [state("READY")]),
        (["tpu-vm ssh", "rdance-job"], [workers("running", "exited 7")]),
    ])
    result = launch(*ARGS, env=gcloud.env)
    assert result.returncode == 7
    assert kinds(gcloud.calls()) == ["describe", "status", "describe", "stop"]
    assert "train_toy failed on t1v-n-0-w-1 (exited 7)" in result.stderr


def test_a_job_killed_by_its_slice_being_preempted_is_not_a_failure(gcloud, launch):
    gcloud.reply([
        (["tpu-vm describe"], [state("READY"), state("PREEMPTED"), state("PREEMPTED"), NOT_FOUND,
                               state("READY")]),
        (["tpu-vm ssh", "rdance-job"], [workers("exited 137", "running"),
                                        workers("not started", "not started"),
                                        workers("exited 0", "exited 0")]),
    ])
    result = launch(*ARGS, env=gcloud.env)
    assert result.returncode == 0, result.stderr
    assert kinds(gcloud.calls()) == [
        "describe", "status", "describe",              # a worker died, and the slice is PREEMPTED
        "describe", "delete", "describe", "create",    # so it is recreated
        "describe", "status", "bootstrap", "run",
        "describe", "status",
    ]


def test_a_queued_slice_is_waited_for_until_active(gcloud, launch):
    gcloud.reply([
        (["queued-resources describe"], [NOT_FOUND, state("WAITING_FOR_RESOURCES"), state("PROVISIONING"),
                                         state("ACTIVE")]),
        (["tpu-vm ssh", "rdance-job"], [workers("not started", "not started"),
                                        workers("exited 0", "exited 0")]),
    ])
    result = launch(ARGS[0], "--queued", *ARGS[1:], env=gcloud.env)
    assert result.returncode == 0, result.stderr
    assert kinds(gcloud.calls()) == ["describe", "create", "describe", "describe", "describe", "status",
                                     "bootstrap", "run", "describe", "status"]
    assert gcloud.calls()[1][:5] == ["compute", "tpus", "queued-resources", "create", "rd"]
    assert "rd is WAITING_FOR_RESOURCES: waiting" in result.stderr


def test_a_bootstrap_that_fails_on_a_healthy_slice_ends_the_loop(gcloud, launch):
    gcloud.reply([
        (["tpu-vm describe"], [state("READY")]),
        (["tpu-vm ssh", "rdance-job"], [workers("not started", "not started")]),
        (["tpu-vm ssh", "install -q -e"], [{"rc": 1, "stderr": "fatal: couldn't find remote ref\n"}]),
    ])
    result = launch(*ARGS, env=gcloud.env)
    assert result.returncode == 1
    assert kinds(gcloud.calls()) == ["describe", "status", "bootstrap", "describe"]
    assert "bootstrap failed on a healthy slice (gcloud exit status 1)" in result.stderr


def test_the_preempted_exit_status_is_rdances(tpu):
    """keep-running tells a preempted job from a finished one by its exit status, which the
    launcher (standard library only) repeats from rdance.core.status; a preempted worker is
    neither finished nor failed, so the job is started again."""
    from rdance.core import status
    assert tpu.PREEMPTED_EXIT == status.EXIT_PREEMPTED == 75
    assert f'if [ "$code" = {status.EXIT_PREEMPTED} ]; then s=preempted' in tpu.status_script("j")
    job = tpu.WorkerJob("t1v-n-0-w-0", "preempted")
    assert job.exit_code is None
