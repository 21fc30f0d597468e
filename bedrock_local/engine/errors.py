"""The errors a model raises while answering, as the runtime API models them: one exception that
carries the modelled exception's name and its HTTP status, so a serving node answers it as that
exception and a batch job writes it as an error line (`errorCode` is the status); and the signal a
model raises to end the batch job it runs in."""


class ModelCallError(Exception):
    """A call to a model failed with a modelled exception (`code`, e.g. ModelErrorException) and its
    HTTP `status`; `message` says what happened."""

    def __init__(self, code: str, status: int, message: str):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


class JobSignal(Exception):
    """A model asks the batch job it runs in to end right before the record it was given, as a real
    Stop, failure or timeout would end it: `action` is "stop", "fail" or "timeout"; `message` is the
    job's failure message (fail) or the note added to its status message (stop, timeout)."""

    ACTIONS = ("fail", "stop", "timeout")

    def __init__(self, action: str, message: str):
        if action not in self.ACTIONS:
            raise ValueError(f"a job signal's action is one of {', '.join(self.ACTIONS)}, not {action!r}")
        super().__init__(message)
        self.action, self.message = action, message

    def to_json(self) -> dict:
        return {"action": self.action, "message": self.message}

    @classmethod
    def from_json(cls, data: dict) -> "JobSignal":
        return cls(data["action"], data["message"])
