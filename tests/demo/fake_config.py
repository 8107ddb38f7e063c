"""Config of tests/demo/fake_stage.py."""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.steps = 3
    c.fail_at = -1          # exit 3 before this step, once per workdir
    c.preempt_at = -1       # log a preemption and exit 0 before this step, once per workdir
    c.value = 1.0
    c.source = ""           # another stage's folder, read at the start
    return c
