"""Paths the settings' defaults point into."""

from pathlib import Path

# The repository's own data/ folder: the demo domain's system prompt, seed examples, rubric.
REPO_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data"
