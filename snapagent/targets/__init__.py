"""The built-in targets (registered under ``snapagent.targets``): the local directory."""
