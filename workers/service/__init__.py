"""The application service: `Engine` (the one service both APIs and the CLI call), the checks
on what callers send (`inputs`) and the public views of sagas and workflows (`views`)."""
