"""One behaviour suite run against every framework adapter (see harness.HARNESSES)."""
