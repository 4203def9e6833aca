"""From a trained run to numbers a reader can trust: evaluate (results.json), the report and its figures, the
mechanism report and sweeps of runs compared with intervals."""
