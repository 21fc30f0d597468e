"""Job handlers, one module per job kind (batch inference, customization, model copy, model import)."""
