"""Node set-up: `rewarm doctor` (can this node capture and restore?) and `rewarm install` (give a
container engine the rewarm runtime handler and hooks)."""
