"""CLI sub-command modules; each defines `register(app)`."""
