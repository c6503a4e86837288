"""`tuneloop`, the one console command: thin typer commands grouped by part of the loop."""
