"""keystile's decisions, written once without I/O: tokens, credentials, verification,
admission and metering. Nothing here imports a web framework, redis or a store driver."""
