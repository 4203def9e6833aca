# Shell functions that copy what a run wrote into docs/results (sourced by regenerate.sh and issue11/sweep_1000.sh).

# copy_sweep_tables <sweep workdir> <dest>: the sweep's tables and figures that exist.
copy_sweep_tables() {
  mkdir -p "$2"
  for f in sweep.md sweep_results.json sweep_runs.csv sweep_summary.csv sweep_contrasts.csv sweep_transfer.csv \
           sweep_lens.png sweep_answer.png; do
    if [ -f "$1/$f" ]; then cp "$1/$f" "$2/"; fi
  done
}

# copy_arm_records <arms dir> <dest>: every finished arm's config, results and training record (enough to
# recompute the sweep tables), each under <dest>/<arm>.
copy_arm_records() {
  for arm in "$1/"*/; do
    [ -f "$arm/eval/results.json" ] || continue
    local dest
    dest="$2/$(basename "$arm")"
    mkdir -p "$dest"
    cp "$arm/config.json" "$arm/eval/results.json" "$dest/"
    for f in metrics.jsonl training_table.md train_summary.json; do
      if [ -f "$arm/$f" ]; then cp "$arm/$f" "$dest/"; fi
    done
  done
}
