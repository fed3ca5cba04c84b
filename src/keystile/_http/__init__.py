"""HTTP without a framework: the exchange every adapter drives, and the management API."""
