"""Helpers shared by the core and the plugins, none of which is a plugin interface: the command
runner (the only place that runs external commands), tar export and checked extraction,
mountinfo, line pipes, durable file writes and durations."""
