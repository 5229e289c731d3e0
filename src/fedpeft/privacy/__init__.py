"""Client-level privacy for fedpeft: clipping, noise, accounting, ledger and secure aggregation."""
