"""Test-side lab helpers: the product's lab (monitor.lab) run in a thread for a whole session,
and network-namespace helpers for faults that need real addresses and root."""
