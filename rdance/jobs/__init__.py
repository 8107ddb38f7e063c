"""Jobs of several stages (the demo, the ablations): each stage an entrypoint run as a child
process with its own workdir, and the report read back from the stages' metrics."""
