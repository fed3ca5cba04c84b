"""The engine: composition of the backends and services, the blocking and async drivers of
the core's steps, and the threads behind them."""
