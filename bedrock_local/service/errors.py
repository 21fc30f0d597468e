"""The errors a service operation raises, named exactly as the AWS service model names them.

The service layer knows nothing of HTTP: it raises these, and the api layer turns each into the
AWS error envelope with the status code the botocore model gives the error shape.
"""


class BedrockError(Exception):
    """An error answered to the client; `code` is the modelled exception name."""

    code = "InternalServerException"

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.message = message
        self.fields = fields


class ValidationException(BedrockError):
    code = "ValidationException"


class ResourceNotFoundException(BedrockError):
    code = "ResourceNotFoundException"


class ConflictException(BedrockError):
    code = "ConflictException"


class TooManyTagsException(BedrockError):
    code = "TooManyTagsException"


class ServiceQuotaExceededException(BedrockError):
    code = "ServiceQuotaExceededException"


class AccessDeniedException(BedrockError):
    code = "AccessDeniedException"


class ThrottlingException(BedrockError):
    code = "ThrottlingException"


class InternalServerException(BedrockError):
    code = "InternalServerException"


class ModelNotReadyException(BedrockError):
    code = "ModelNotReadyException"


class ServiceUnavailableException(BedrockError):
    code = "ServiceUnavailableException"


class ModelErrorException(BedrockError):
    code = "ModelErrorException"


class ModelTimeoutException(BedrockError):
    code = "ModelTimeoutException"
