"""The long-running processes: job workers, serving nodes, and the supervisor that restarts them."""
