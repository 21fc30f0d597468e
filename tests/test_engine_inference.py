"""Engine inference: request/response bodies per model family, batched generation on a tiny random
Llama (greedy, seeded sampling, stops, limits), embeddings, the model cache, and the packaged real
models (SmolLM2 answering a Converse request, MiniLM embeddings)."""

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bedrock_local.engine.catalog import find_foundation_model, packaged_weights  # noqa: E402
from bedrock_local.engine.formats import (  # noqa: E402
    EmbeddingRequest,
    EmbeddingResult,
    FormatError,
    InvokeRequest,
    TextRequest,
    TextResult,
    parse_converse_body,
    parse_invoke,
    render_converse_response,
    render_invoke,
)
from bedrock_local.engine.generation import TextGenerator  # noqa: E402
from bedrock_local.engine.model_cache import ModelCache, model_bytes  # noqa: E402

MINILM_ID = "sentence-transformers.all-minilm-l6-v2-v1:0"
SMOLLM_ID = "huggingface.smollm2-135m-instruct-v1:0"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def user(text):
    return {"role": "user", "content": [{"text": text}]}


def chat(text, max_tokens=12, temperature=0.0, top_p=1.0, stops=(), system=None):
    return TextRequest(messages=[{"role": "user", "content": text}], prompt=None, system=system,
                       max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop_sequences=list(stops))


def llama_body(body, where="modelInput") -> TextRequest:
    return parse_invoke("meta-llama", body, where).text


def titan_body(body, where="modelInput") -> EmbeddingRequest:
    """The packaged embedding models' own body (Titan's inputText and normalize)."""
    return parse_invoke("titan-embed", body, where).embeddings[0]


def format_error(call, *args, **kwargs) -> str:
    with pytest.raises(FormatError) as info:
        call(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# formats: InvokeModel, Meta Llama body


def test_llama_body_defaults_and_values():
    request = llama_body({"prompt": "Hi"})
    assert (request.prompt, request.messages, request.system) == ("Hi", None, None)
    assert (request.max_tokens, request.temperature, request.top_p, request.stop_sequences) == (512, 0.5, 0.9, [])
    request = llama_body({"prompt": "Hi", "max_gen_len": 2048, "temperature": 0, "top_p": 1})
    assert (request.max_tokens, request.temperature, request.top_p) == (2048, 0.0, 1.0)


def test_llama_body_missing_prompt():
    assert format_error(llama_body, {"max_gen_len": 5}) == "modelInput.prompt is required"


@pytest.mark.parametrize("value", [0, 2049, "abc", 5.5, True, None])
def test_llama_body_max_gen_len_checked(value):
    message = format_error(llama_body, {"prompt": "x", "max_gen_len": value})
    assert message == f"modelInput.max_gen_len must be an integer between 1 and 2048, got {value!r}"


@pytest.mark.parametrize("field,value", [("temperature", 1.5), ("temperature", "hot"), ("top_p", -0.1),
                                         ("top_p", False), ("temperature", float("nan"))])
def test_llama_body_numbers_checked(field, value):
    message = format_error(llama_body, {"prompt": "x", field: value})
    assert message.startswith(f"modelInput.{field} must be a number between 0 and 1, got")


@pytest.mark.parametrize("prompt,expected", [(123, "must be a string, got a number"), ("", "must not be empty"),
                                             (["a"], "must be a string, got a list")])
def test_llama_body_prompt_type(prompt, expected):
    assert format_error(llama_body, {"prompt": prompt}) == f"modelInput.prompt {expected}"


def test_llama_body_unknown_keys_named():
    message = format_error(llama_body, {"prompt": "x", "max_tokens": 5, "images": []})
    assert "'max_tokens'" in message and "'images'" in message and message.startswith("modelInput ")
    assert "allowed: prompt, max_gen_len, temperature, top_p" in message


def test_body_must_be_object_and_prefix_configurable():
    assert format_error(llama_body, ["x"]) == "modelInput must be a JSON object, got a list"
    assert format_error(llama_body, {}, where="body") == "body.prompt is required"
    assert format_error(parse_converse_body, {"messages": []}, where="request").startswith("request.messages")
    with pytest.raises(ValueError):
        parse_invoke("image", {"prompt": "x"})


# --------------------------------------------------------------------------------------------
# formats: InvokeModel, Titan embeddings body


def test_titan_body():
    request = titan_body({"inputText": "hello"})
    assert isinstance(request, EmbeddingRequest) and (request.text, request.normalize) == ("hello", True)
    assert titan_body({"inputText": "x", "normalize": False}).normalize is False
    assert format_error(titan_body, {}) == "modelInput.inputText is required"
    assert format_error(titan_body, {"inputText": ""}) == "modelInput.inputText must not be empty"
    assert format_error(titan_body, {"inputText": 3}).startswith("modelInput.inputText must be a string")
    assert "'dimensions'" in format_error(titan_body, {"inputText": "x", "dimensions": 256})
    assert format_error(titan_body, {"inputText": "x", "normalize": "yes"}) == (
        "modelInput.normalize must be true or false, got 'yes'")


# --------------------------------------------------------------------------------------------
# formats: Converse


def test_converse_body_parsed():
    request = parse_converse_body({
        "messages": [user("Hi"), {"role": "assistant", "content": [{"text": "Hello"}]},
                     {"role": "user", "content": [{"text": "a"}, {"text": "b"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.2, "topP": 0.5, "stopSequences": ["\n\n", "END"]},
    })
    assert request.prompt is None
    assert request.messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                {"role": "user", "content": "a\nb"}]
    assert (request.system, request.max_tokens, request.temperature, request.top_p) == ("Be brief.", 64, 0.2, 0.5)
    assert request.stop_sequences == ["\n\n", "END"]
    defaults = parse_converse_body({"messages": [user("Hi")]})
    assert (defaults.system, defaults.max_tokens, defaults.stop_sequences) == (None, 512, [])


@pytest.mark.parametrize("messages,expected", [
    ([{"role": "assistant", "content": [{"text": "x"}]}], "modelInput.messages[0].role must be 'user', got 'assistant'"),
    ([user("a"), user("b")], "modelInput.messages[1].role must be 'assistant', got 'user'"),
    ([{"role": "system", "content": [{"text": "x"}]}], "modelInput.messages[0].role must be 'user' or 'assistant'"),
    ([{"content": [{"text": "x"}]}], "modelInput.messages[0].role is required"),
    ([{"role": "user"}], "modelInput.messages[0].content is required"),
    ([{"role": "user", "content": []}], "modelInput.messages[0].content must hold at least one content block"),
    ([{"role": "user", "content": "hi"}], "modelInput.messages[0].content must be a list of content blocks"),
    ([{"role": "user", "content": [{"text": 5}]}], "modelInput.messages[0].content[0].text must be a string"),
    ([{"role": "user", "content": [{"text": "x"}], "extra": 1}], "modelInput.messages[0] has unknown"),
    ([], "modelInput.messages must hold at least one message"),
    ("hi", "modelInput.messages must be a list"),
])
def test_converse_messages_checked(messages, expected):
    assert format_error(parse_converse_body, {"messages": messages}).startswith(expected)


def test_converse_role_order_message_explains():
    message = format_error(parse_converse_body, {"messages": [user("a"), user("b")]})
    assert "alternate" in message


def test_converse_non_text_blocks_named():
    body = {"messages": [user("a"), {"role": "assistant", "content": [{"text": "b"}]},
                         {"role": "user", "content": [{"text": "c"}, {"image": {"format": "png"}}]}]}
    message = format_error(parse_converse_body, body)
    assert message.startswith("modelInput.messages[2].content[1]") and "'image'" in message
    message = format_error(parse_converse_body, {"messages": [user("a")], "system": [{"guardContent": {}}]})
    assert message.startswith("modelInput.system[0]") and "'guardContent'" in message


def test_converse_missing_messages_and_unknown_keys():
    assert format_error(parse_converse_body, {}) == "modelInput.messages is required"
    message = format_error(parse_converse_body, {"messages": [user("a")], "toolConfig": {}})
    assert message == "modelInput.toolConfig.tools is required"  # tool use: tests/test_tool_use.py
    message = format_error(parse_converse_body, {"messages": [user("a")], "inferenceConfig": {"max_tokens": 5}})
    assert message.startswith("modelInput.inferenceConfig has unknown") and "'max_tokens'" in message


@pytest.mark.parametrize("config,expected", [
    ({"maxTokens": 0}, "modelInput.inferenceConfig.maxTokens must be an integer at least 1, got 0"),
    ({"maxTokens": "9"}, "modelInput.inferenceConfig.maxTokens must be an integer at least 1, got '9'"),
    ({"temperature": 2}, "modelInput.inferenceConfig.temperature must be a number between 0 and 1, got 2"),
    ({"topP": -1}, "modelInput.inferenceConfig.topP must be a number between 0 and 1, got -1"),
    ({"stopSequences": ["a", "b", "c", "d", "e"]}, "modelInput.inferenceConfig.stopSequences may hold at most 4 strings, got 5"),
    ({"stopSequences": "END"}, "modelInput.inferenceConfig.stopSequences must be a list of strings"),
    ({"stopSequences": ["ok", ""]}, "modelInput.inferenceConfig.stopSequences[1] must not be empty"),
    ("fast", "modelInput.inferenceConfig must be a JSON object"),
])
def test_converse_inference_config_checked(config, expected):
    assert format_error(parse_converse_body, {"messages": [user("a")], "inferenceConfig": config}).startswith(expected)


def test_render_shapes():
    result = TextResult(text="Paris.", input_tokens=10, output_tokens=3, stop_reason="end_turn", latency_ms=42)
    assert render_invoke(InvokeRequest("meta-llama"), result) == {
        "generation": "Paris.", "prompt_token_count": 10, "generation_token_count": 3, "stop_reason": "stop"}
    for reason, llama_reason in [("max_tokens", "length"), ("stop_sequence", "stop")]:
        result.stop_reason = reason
        assert render_invoke(InvokeRequest("meta-llama"), result)["stop_reason"] == llama_reason
    result.stop_reason = "stop_sequence"
    assert render_converse_response(result) == {
        "output": {"message": {"role": "assistant", "content": [{"text": "Paris."}]}},
        "stopReason": "stop_sequence",
        "usage": {"inputTokens": 10, "outputTokens": 3, "totalTokens": 13},
        "metrics": {"latencyMs": 42},
    }
    assert render_converse_response(result, latency_ms=7)["metrics"] == {"latencyMs": 7}
    assert render_invoke(parse_invoke("titan-embed", {"inputText": "x"}),
                         [EmbeddingResult(vector=[0.6, 0.8], input_tokens=4)]) == {
        "embedding": [0.6, 0.8], "inputTextTokenCount": 4}


# --------------------------------------------------------------------------------------------
# generation on a tiny random Llama


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(packaged_weights(find_foundation_model(MINILM_ID)))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(tokenizer, seed=0, hidden=64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, bos_token_id=101, eos_token_id=102, pad_token_id=0,
                         initializer_range=0.2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    return TextGenerator(tiny_llama(tiny_tokenizer), tiny_tokenizer)


PROMPTS = ["hello", "the quick brown fox jumps over the lazy dog", "what is the capital of france?",
           "one two three four five six seven eight nine ten eleven twelve", "a", "machine learning is fun"]


def greedy_ids(generator, request, new_tokens):
    """Token ids of a plain model.generate greedy run (the baseline a user would write)."""
    ids = generator.prompt_ids(request)
    with torch.no_grad():
        out = generator.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                       pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_batched_greedy_equals_one_by_one(tiny):
    requests = [chat(p, max_tokens=10) for p in PROMPTS]
    alone = [tiny.generate([r])[0] for r in requests]
    assert len({r.text for r in alone}) == len(PROMPTS)  # distinct outputs, so order is visible
    together = tiny.generate(requests)
    pairs = tiny.generate(requests[::-1], max_batch_size=2)[::-1]
    for one, batched, paired in zip(alone, together, pairs):
        assert isinstance(one, TextResult)
        assert (one.text, one.output_tokens, one.input_tokens) == (batched.text, batched.output_tokens,
                                                                   batched.input_tokens)
        assert (one.text, one.output_tokens) == (paired.text, paired.output_tokens)
    # ... and the same as a plain transformers generate of each prompt
    for request, result in zip(requests[:2], alone):
        assert result.text == tiny.tokenizer.decode(greedy_ids(tiny, request, 10), skip_special_tokens=True)


def test_static_cache_path_gives_the_dynamic_outputs(tiny, tiny_tokenizer):
    """The GPU path's static KV cache (padded widths, a power-of-two cache length), run here on the CPU:
    the same texts, counts and stop reasons as the dynamic cache, sampling rows included."""
    static = TextGenerator(tiny.model, tiny_tokenizer, static_cache=True)
    requests = ([chat(p, max_tokens=n) for p, n in zip(PROMPTS, (10, 3, 7, 12, 5, 9))]
                + [chat("machine learning is fun", max_tokens=6, temperature=0.8)])
    dynamic_results, static_results = tiny.generate(requests, seed=3), static.generate(requests, seed=3)
    assert [(r.text, r.output_tokens, r.input_tokens, r.stop_reason) for r in static_results] == \
        [(r.text, r.output_tokens, r.input_tokens, r.stop_reason) for r in dynamic_results]
    assert not tiny.static_cache  # the CPU default stays the dynamic cache


def test_input_tokens_count_the_template(tiny):
    request = chat("hello there", system="be nice")
    rendered = "system: be nice\nuser: hello there\nassistant:"
    result = tiny.generate([request])[0]
    assert result.input_tokens == tiny.count_tokens(rendered) > tiny.count_tokens("hello there")
    raw = TextRequest(messages=None, prompt=rendered, system=None, max_tokens=5, temperature=0, top_p=1)
    # A raw prompt is tokenized as-is (this tokenizer adds [CLS] ... [SEP]).
    assert tiny.generate([raw])[0].input_tokens == tiny.count_tokens(rendered) + 2


def test_max_tokens_per_request_in_one_batch(tiny):
    limits = [3, 7, 12]
    results = tiny.generate([chat("machine learning is fun", max_tokens=n) for n in limits])
    for n, result in zip(limits, results):
        assert (result.output_tokens, result.stop_reason) == (n, "max_tokens")
    assert results[2].text.startswith(results[0].text) and len(results[2].text) > len(results[1].text)


def test_eos_ends_the_turn(tiny, tiny_tokenizer):
    request = chat("the quick brown fox jumps over the lazy dog", max_tokens=10)
    ids = greedy_ids(tiny, request, 10)
    eos = ids[3]
    model = copy.deepcopy(tiny.model)
    model.generation_config.eos_token_id = [102, eos]
    result = TextGenerator(model, tiny_tokenizer).generate([request])[0]
    first = ids.index(eos)
    assert (result.stop_reason, result.output_tokens) == ("end_turn", first)
    assert result.text == tiny_tokenizer.decode(ids[:first], skip_special_tokens=True)


def test_stop_sequences_cut_the_text(tiny):
    plain = tiny.generate([chat("what is the capital of france?", max_tokens=12)])[0]
    words = plain.text.split()
    stop = words[len(words) // 2]
    expected = plain.text[: plain.text.find(stop)]
    cut, untouched, never = tiny.generate([
        chat("what is the capital of france?", max_tokens=12, stops=["zzzz-not-there", stop]),
        chat("what is the capital of france?", max_tokens=12),
        chat("what is the capital of france?", max_tokens=12, stops=["zzzz-not-there"]),
    ])
    assert (cut.text, cut.stop_reason) == (expected, "stop_sequence")
    assert 1 <= cut.output_tokens < plain.output_tokens
    assert tiny.count_tokens(expected) <= cut.output_tokens  # counted up to the stop, not beyond
    assert (untouched.text, untouched.stop_reason, untouched.output_tokens) == (plain.text, "max_tokens", 12)
    assert (never.text, never.stop_reason) == (plain.text, "max_tokens")


def test_seeded_sampling_is_reproducible_and_per_request(tiny):
    sampled = [chat(p, max_tokens=10, temperature=1.0, top_p=1.0) for p in PROMPTS[:3]]
    greedy = chat(PROMPTS[3], max_tokens=10)
    first = tiny.generate([*sampled, greedy], seed=7)
    again = tiny.generate([*sampled, greedy], seed=7)
    assert [r.text for r in first] == [r.text for r in again]
    other_seed = tiny.generate(sampled, seed=8)
    assert [r.text for r in other_seed] != [r.text for r in first[:3]]
    # Each request's draw depends on the request and the seed, not on its batch neighbours.
    assert tiny.generate([sampled[1]], seed=7)[0].text == first[1].text
    # Greedy and sampling mixed in one call: each keeps its own decoding.
    greedy_texts = [r.text for r in tiny.generate([chat(p, max_tokens=10) for p in PROMPTS[:4]])]
    assert first[3].text == greedy_texts[3]
    assert [r.text for r in first[:3]] != greedy_texts[:3]
    # top_p = 0 keeps only the most likely token: sampling collapses to greedy.
    narrow = tiny.generate([chat(p, max_tokens=10, temperature=1.0, top_p=0.0) for p in PROMPTS[:3]], seed=3)
    assert [r.text for r in narrow] == greedy_texts[:3]


def test_row_sampler_respects_temperature_and_top_p():
    from bedrock_local.engine.generation import _Row, _RowSampler

    def draw(distribution, top_p, count, temperature=1.0):
        rows = [_Row(i, [1], chat("x", temperature=temperature, top_p=top_p), seed=i) for i in range(count)]
        scores = torch.log(torch.tensor(distribution)).repeat(count, 1)
        forced = _RowSampler(rows, torch.device("cpu"))(torch.zeros(count, 1, dtype=torch.long), scores)
        assert bool((torch.isfinite(forced).sum(dim=-1) == 1).all())
        return forced.argmax(dim=-1).tolist()

    picks = draw([0.5, 0.3, 0.15, 0.05], top_p=0.7, count=400)
    assert set(picks) == {0, 1} and 0.5 < picks.count(0) / 400 < 0.75  # 0.5 / 0.8 = 0.625
    assert set(draw([0.5, 0.3, 0.15, 0.05], top_p=1.0, count=400)) == {0, 1, 2, 3}
    assert set(draw([0.5, 0.3, 0.15, 0.05], top_p=1.0, count=50, temperature=0.01)) == {0}
    # A flat distribution: the nucleus holds more tokens than the top-k candidates looked at first.
    flat = draw([1.0] * 1000, top_p=0.5, count=600)
    assert len(set(flat)) > _RowSampler.NUCLEUS_CANDIDATES


def test_too_long_prompt_is_an_error_entry(tiny):
    long_prompt = " ".join(["word"] * 150)
    results = tiny.generate([chat("hello", max_tokens=5), chat(long_prompt, max_tokens=5),
                             chat("hello", max_tokens=125), chat("a", max_tokens=5)])
    assert isinstance(results[0], TextResult) and isinstance(results[3], TextResult)
    assert isinstance(results[1], FormatError) and "context of 128 tokens" in str(results[1])
    assert isinstance(results[2], FormatError)  # short prompt, but prompt + max_tokens > 128
    assert results[0].output_tokens == 5


def test_chat_rendering_edges(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    generator = TextGenerator(tiny_llama(tiny_tokenizer), tokenizer)
    # A conversation ending with an assistant turn: the answer continues that text.
    prefill = TextRequest(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the answer"}],
                          prompt=None, system=None, max_tokens=3, temperature=0, top_p=1)
    assert generator.generate([prefill])[0].input_tokens == generator.count_tokens("user: hi\nassistant:the answer")
    # A template that refuses a system turn gets the system text in the first user turn.
    tokenizer.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}" \
        + CHAT_TEMPLATE
    result = generator.generate([chat("hi", system="be nice")])[0]
    assert result.input_tokens == generator.count_tokens("user: be nice\n\nhi\nassistant:")
    # No chat template at all: messages are a per-request error, raw prompts still work.
    tokenizer.chat_template = None
    raw = TextRequest(messages=None, prompt="hello", system=None, max_tokens=3, temperature=0, top_p=1)
    results = generator.generate([chat("hello"), raw])
    assert isinstance(results[0], FormatError) and "chat template" in str(results[0])
    assert isinstance(results[1], TextResult) and results[1].output_tokens == 3


# --------------------------------------------------------------------------------------------
# the model cache


@pytest.fixture(scope="module")
def tiny_folders(tiny_tokenizer, tmp_path_factory):
    folders = []
    for seed in range(3):
        folder = tmp_path_factory.mktemp(f"tiny-{seed}")
        tiny_llama(tiny_tokenizer, seed=seed, hidden=32).save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


def test_cache_loads_once(tiny_folders):
    cache = ModelCache()
    first = cache.text_generator(tiny_folders[0])
    assert cache.text_generator(tiny_folders[0]) is first
    assert cache.text_generator(str(tiny_folders[0])) is first
    assert cache.loaded() == [tiny_folders[0].resolve()]
    assert isinstance(first.generate([chat("hello", max_tokens=2)])[0], TextResult)


def test_cache_evicts_least_recently_used(tiny_folders):
    a, b, c = tiny_folders
    size = model_bytes(ModelCache().text_generator(a).model)
    cache = ModelCache(memory_budget_bytes=int(size * 2.5))  # room for two
    model_a = cache.text_generator(a)
    cache.text_generator(b)
    assert cache.text_generator(a) is model_a  # a is now the most recently used
    cache.text_generator(c)
    assert cache.loaded() == [a.resolve(), c.resolve()]  # b went, not a
    small = ModelCache(memory_budget_bytes=int(size * 1.5))  # room for one
    small.text_generator(a)
    small.text_generator(b)
    assert small.loaded() == [b.resolve()]
    tight = ModelCache(memory_budget_bytes=1)  # a model larger than the budget still loads, alone
    tight.text_generator(a)
    assert tight.loaded() == [a.resolve()]


# --------------------------------------------------------------------------------------------
# the packaged real models


@pytest.mark.real_weights
def test_smollm2_answers_converse_about_france():
    from conftest import SHARED_CACHE

    from bedrock_local.engine.loading import materialize_foundation_model

    # the conversion itself is tested in test_engine_loading.py; here the run's shared cache is reused
    folder = materialize_foundation_model(find_foundation_model(SMOLLM_ID), SHARED_CACHE / "foundation-models")
    cache = ModelCache()
    generator = cache.text_generator(folder)
    assert cache.text_generator(folder) is generator
    request = parse_converse_body({
        "messages": [user("What is the capital of France? Answer in one sentence.")],
        "inferenceConfig": {"maxTokens": 32, "temperature": 0},
    })
    llama_request = llama_body({
        "prompt": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "max_gen_len": 32, "temperature": 0})
    converse, invoke = generator.generate([request, llama_request])
    body = render_converse_response(converse)
    answer = body["output"]["message"]["content"][0]["text"]
    assert "Paris" in answer, answer
    assert body["stopReason"] == "end_turn" and 0 < body["usage"]["outputTokens"] < 32
    assert body["usage"]["inputTokens"] > 20  # SmolLM2's template adds its default system prompt
    assert "Paris" in render_invoke(InvokeRequest("meta-llama"), invoke)["generation"]


@pytest.mark.real_weights
def test_minilm_near_synonyms_are_closer():
    folder = packaged_weights(find_foundation_model(MINILM_ID))
    cache = ModelCache()
    embedder = cache.embedder(folder)
    assert cache.embedder(folder) is embedder
    texts = ["A cat is sitting on the mat.", "A kitten sits on the rug.", "The stock market fell sharply today."]
    results = embedder.embed([titan_body({"inputText": t}) for t in texts], batch_size=2)
    vectors = torch.tensor([r.vector for r in results])
    assert vectors.shape == (3, 384)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-4)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.2, (similar, unrelated)
    assert results[0].input_tokens == len(embedder.model.tokenizer(texts[0])["input_ids"]) == 10
    # normalize=false answers the model's own output (MiniLM's last module already normalizes).
    raw = embedder.embed([EmbeddingRequest(text=texts[2], normalize=False)])[0]
    own = embedder.model.encode([texts[2]], convert_to_tensor=True, normalize_embeddings=False)[0].cpu()
    assert torch.allclose(torch.tensor(raw.vector), own, atol=1e-5)
