"""The task: arithmetic prompts and their splits (arithmetic.py), the prompt formats (prompt_formats.py) and the
classifier's target words (targets.py)."""
