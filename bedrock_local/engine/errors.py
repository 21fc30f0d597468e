"""The errors a model raises while answering, as the runtime API models them: one exception that
carries the modelled exception's name and its HTTP status, so a serving node answers it as that
exception and a batch job writes it as an error line (`errorCode` is the status)."""


class ModelCallError(Exception):
    """A call to a model failed with a modelled exception (`code`, e.g. ModelErrorException) and its
    HTTP `status`; `message` says what happened."""

    def __init__(self, code: str, status: int, message: str):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message
