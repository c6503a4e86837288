"""tuneloop chat app: settings, CLI, serving, UI."""
