"""Sentence embeddings through sentence-transformers, on CUDA when the machine has it.

`Embedder.embed` encodes many `EmbeddingRequest`s in batches and answers one `EmbeddingResult`
per request, in order: the vector (unit length unless the request asked otherwise) and the
number of tokens the model read (special tokens included, after its truncation to
`max_seq_length`).
"""

from __future__ import annotations

import torch

from .formats import EmbeddingRequest, EmbeddingResult
from .generation import default_device


class Embedder:
    """Embeds text with one SentenceTransformer model."""

    def __init__(self, model, device: str | None = None):
        self.device = torch.device(device or default_device())
        self.model = model.to(self.device)
        self.model.eval()

    @property
    def dimension(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def count_tokens(self, text: str) -> int:
        """Tokens the model reads for `text` (special tokens included, truncated as it truncates)."""
        return self._token_counts([text])[0]

    def embed(self, requests: list[EmbeddingRequest], *, batch_size: int = 64) -> list[EmbeddingResult]:
        if not requests:
            return []
        texts = [request.text for request in requests]
        with torch.inference_mode():
            vectors = self.model.encode(
                texts,
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            ).float()
        wanted = torch.tensor([request.normalize for request in requests], device=vectors.device)
        unit = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        vectors = torch.where(wanted[:, None], unit, vectors).cpu().tolist()
        counts = self._token_counts(texts)
        return [EmbeddingResult(vector=v, input_tokens=n) for v, n in zip(vectors, counts)]

    def _token_counts(self, texts: list[str]) -> list[int]:
        tokenizer = self.model.tokenizer
        limit = getattr(self.model, "max_seq_length", None)
        encoded = tokenizer(texts, truncation=limit is not None, max_length=limit, add_special_tokens=True)
        return [len(ids) for ids in encoded["input_ids"]]
