"""Config of tests/jobs/fake_stage.py."""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.steps = 3
    c.fail_at = -1          # exit 3 before this step, once per workdir
    c.preempt_at = -1       # save, mark PREEMPTED and exit 75 before this step, once per workdir
    c.value = 1.0
    c.rate = 1.0            # steps/s written to progress.json (the log line's ETA says 1)
    c.pause = 0.0           # seconds to wait after each step's line (the runner reads progress.json then)
    c.source = ""           # another stage's folder, read at the start
    return c
