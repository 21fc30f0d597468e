"""The Amazon Titan embeddings InvokeModel bodies: inputText (and, by version, normalize, dimensions,
embeddingTypes) -> embedding and inputTextTokenCount. Three formats: the packaged embedding models'
own body ("titan-embed", at the model's own size), Titan Embeddings G1 and Titan V2."""

from __future__ import annotations

from .checks import a_boolean, a_string, show, some_of
from .common import EmbeddingFormat, EmbeddingRequest, EmbeddingResult, FormatError, InvokeRequest


class TitanEmbed(EmbeddingFormat):
    """The packaged embedding models' own body: Titan's inputText and normalize, with the vector at
    the model's own size."""

    name = "titan-embed"
    title = "Amazon Titan Text Embeddings"
    required = ("inputText",)
    optional = ("normalize",)

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        text = a_string(body["inputText"], f"{where}.inputText")
        normalize = a_boolean(body.get("normalize", True), f"{where}.normalize")
        return InvokeRequest(cls.name, embeddings=[EmbeddingRequest(text=text, normalize=normalize)])

    @classmethod
    def response(cls, request: InvokeRequest, results: list[EmbeddingResult], vectors: list[list[float]]) -> dict:
        return {"embedding": vectors[0], "inputTextTokenCount": results[0].input_tokens}


class TitanEmbedV1(TitanEmbed):
    name = "titan-embed-v1"
    title = "Amazon Titan Embeddings G1 - Text"
    optional = ()

    DIMENSIONS = 1536

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        text = a_string(body["inputText"], f"{where}.inputText")
        # G1 takes no parameters and does not make its vectors unit length.
        request = EmbeddingRequest(text=text, normalize=False, dimensions=cls.DIMENSIONS)
        return InvokeRequest(cls.name, embeddings=[request], options={"dimensions": cls.DIMENSIONS})


class TitanEmbedV2(TitanEmbed):
    name = "titan-embed-v2"
    title = "Amazon Titan Text Embeddings V2"
    optional = ("dimensions", "normalize", "embeddingTypes")

    DIMENSIONS = (1024, 512, 256)  # the first is the default
    TYPES = ("float", "binary")

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        text = a_string(body["inputText"], f"{where}.inputText")
        dimensions = body.get("dimensions", cls.DIMENSIONS[0])
        if isinstance(dimensions, bool) or dimensions not in cls.DIMENSIONS:
            sizes = ", ".join(str(d) for d in cls.DIMENSIONS)
            raise FormatError(f"{where}.dimensions must be one of {sizes}, got {show(dimensions)}")
        dimensions = int(dimensions)
        normalize = a_boolean(body.get("normalize", True), f"{where}.normalize")
        types = some_of(body.get("embeddingTypes", ["float"]), f"{where}.embeddingTypes", cls.TYPES)
        request = EmbeddingRequest(text=text, normalize=normalize, dimensions=dimensions)
        options = {"dimensions": dimensions, "normalize": normalize, "embedding_types": types}
        return InvokeRequest(cls.name, embeddings=[request], options=options)

    @classmethod
    def response(cls, request: InvokeRequest, results: list[EmbeddingResult], vectors: list[list[float]]) -> dict:
        # embeddingsByType is always there; "binary" is 0 or 1 per dimension
        by_type: dict[str, list] = {}
        for kind in request.options.get("embedding_types", ["float"]):
            by_type[kind] = vectors[0] if kind == "float" else [1 if x > 0 else 0 for x in vectors[0]]
        return {**super().response(request, results, vectors), "embeddingsByType": by_type}
