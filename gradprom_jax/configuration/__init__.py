"""Run configuration: defaults, validation and the --help text of every key."""
