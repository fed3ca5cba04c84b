"""Redis: the gateway that owns every call and its error policy, the Lua scripts, the
pipelined client and fast mode's invalidation channel."""
