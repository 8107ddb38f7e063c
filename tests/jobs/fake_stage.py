"""A stand-in entrypoint for the stage runner's tests: absl-style progress lines and
WORKDIR/progress.json (one step a second), resumable (WORKDIR/progress holds the last finished
step), an export marker at the end; it can fail or be "preempted" (PREEMPTED marker, exit 75)
once at a chosen step, and counts its launches in WORKDIR/launches."""
import json
import os
import sys
import time

from rdance.core import status
from tests.jobs.fake_config import get_config


def log(message):
    print(f"I1122 07:42:47.534483 1 fake_stage.py:1] {message}", flush=True)


def main(argv):
    config = get_config()
    workdir = None
    for arg in argv[1:]:
        key, _, value = arg[2:].partition("=")
        if key == "workdir":
            workdir = value
        elif key.startswith("config."):
            name = key[len("config."):]
            config[name] = type(config[name])(value)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "launches"), "a") as f:
        f.write(json.dumps(argv[1:]) + "\n")
    if config.source and not os.path.isdir(config.source):
        sys.exit(f"source {config.source} missing")
    progress = os.path.join(workdir, "progress")
    start = int(open(progress).read()) if os.path.exists(progress) else 0
    if start:
        log(f"resuming from {progress}")
    print("a line that is not absl's", flush=True)
    for step in range(start + 1, config.steps + 1):
        for name, code in (("fail_at", 3), ("preempt_at", status.EXIT_PREEMPTED)):
            marker = os.path.join(workdir, name)
            if getattr(config, name) == step and not os.path.exists(marker):
                open(marker, "w").close()
                if code == status.EXIT_PREEMPTED:
                    log(f"preempted: saved {workdir}/{step - 1}; rerun the same command to resume")
                    status.mark_preempted(workdir, step - 1, f"{workdir}/{step - 1}")
                sys.exit(code)
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "value": config.value * step}) + "\n")
        with open(progress, "w") as f:
            f.write(str(step))
        status.write_progress(workdir, "train", step, config.steps, config.rate)
        log(f"step {step}/{config.steps}  loss 0.5  ETA 0:00:0{config.steps - step}")
        time.sleep(config.pause)
    os.makedirs(os.path.join(workdir, "export"), exist_ok=True)
    log(f"exported to {workdir}/export")


if __name__ == "__main__":
    main(sys.argv)
