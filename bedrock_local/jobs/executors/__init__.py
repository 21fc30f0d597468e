"""Executors that run a handler's heavy work: in the worker process, or on a Ray cluster."""
