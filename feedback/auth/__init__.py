"""Accounts, passwords, API keys and the login throttle's policy."""
