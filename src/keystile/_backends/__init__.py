"""What the services and the engine run on, built first: the settings, the store, the clocks,
the argon2 hasher, the in-process cache and the Redis gateway."""
