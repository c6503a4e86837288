"""`python -m app.cli` runs the console command (what tests and `watch` rounds start)."""

from app.cli.main import main

main()
