"""bedrock-local: Amazon Bedrock's model-management and runtime APIs, served locally on open-weight models."""

__version__ = "0.1.0"
