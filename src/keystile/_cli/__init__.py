"""The ``keystile`` command."""
