"""`tuneloop`, the one console command: thin typer commands grouped by part of the loop."""

from app.offline import go_offline

# First, before any command imports the hub client, transformers, TRL or Gradio: they read
# these variables at import time (app/offline.py).
go_offline()
