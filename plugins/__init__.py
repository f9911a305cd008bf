"""Built-in snapagent plugins, one package per filesystem (registered through entry points)."""
