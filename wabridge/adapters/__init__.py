"""Adapters: one folder per port, each with its production adapter (a real server) and its embedded one."""
