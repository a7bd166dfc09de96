"""Maintenance commands for the repository (not part of the installed bot)."""
