"""What the command-line tools share: flag parsing, one error path, and process set-up (huge pages)."""
