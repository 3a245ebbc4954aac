"""The operator's command line, `rewarm` (cli/main.py)."""
