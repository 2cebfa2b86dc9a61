"""The `saga` command: every process entry point (`serve`, `worker`, `migrate`, `demo`), the
offline tools (`validate`, `simulate`) and the client commands. Nothing imports this package."""
