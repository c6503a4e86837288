"""Paths the settings' defaults point into: the checkout tuneloop runs from."""

from pathlib import Path

# The checkout: app/settings/paths.py is three levels below it.
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# The repository's own data/ folder: the demo domain's system prompt, seed examples, rubric.
REPO_DATA_DIR = REPO_ROOT / "data"
# The local Argilla server's own virtualenv, built by .ci/setup beside ours.
ARGILLA_VENV = REPO_ROOT / ".venv-argilla"
