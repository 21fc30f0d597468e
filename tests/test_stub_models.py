"""The fast deterministic test models (`bedrock-local.test-text-v1:0`, `bedrock-local.test-embed-v1:0`)
and the faults they inject.

Engine level: the exact answers of the documented function (words of the last user message or
prompt, reversed; max_tokens, stop sequences), token counts, streamed deltas, the hashed embeddings
(determinism, similarity, sizes), the fault rules and directives, the alias file's checks, and that
nothing imports torch. Through boto3 against a real server: both models listed; Converse,
ConverseStream, InvokeModel and its stream with every text body format (AWS ids aliased to the test
model) and every embedding format, with exact outputs; a 1,000-record batch job with exact output
lines; and every fault exactly as configured (error lines, exceptions and HTTP statuses, throttling
rates, a job that fails, stops or times out at its chosen point)."""

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from conftest import Server
from test_batch_inference import (OUT_BUCKET, ROLE, create_job, job_folder, put_input, read_manifest, read_out, unique,
                                  wait_final)

from bedrock_local.engine import aliases, stub_models
from bedrock_local.engine.formats import EmbeddingRequest, FormatError, TextRequest, parse_invoke

TEXT = "bedrock-local.test-text-v1:0"
EMBED = "bedrock-local.test-embed-v1:0"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN_TEXT = "amazon.titan-text-express-v1"
MISTRAL = "mistral.mistral-7b-instruct-v0:2"
LLAMA = "meta.llama3-8b-instruct-v1:0"
TITAN_V1 = "amazon.titan-embed-text-v1"
TITAN_V2 = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"
THROTTLED = "bedrock-local.throttled-text-v1:0"
SEEDED = "bedrock-local.seeded-throttle-text-v1:0"
ERRORING = "bedrock-local.erroring-text-v1:0"
THROTTLED_EMBED = "bedrock-local.throttled-embed-v1:0"
FAILING_JOB = "bedrock-local.failing-job-text-v1:0"
STOPPING_JOB = "bedrock-local.stopping-job-text-v1:0"
TIMEOUT_JOB = "bedrock-local.timeout-job-embed-v1:0"
SENTENCE = "Say hello to the whole wide world"
# fault name: (exception, HTTP status)
FAULTS = {"throttle": ("ThrottlingException", 429), "model-error": ("ModelErrorException", 424),
          "timeout": ("ModelTimeoutException", 408), "validation": ("ValidationException", 400),
          "internal": ("InternalServerException", 500), "unavailable": ("ServiceUnavailableException", 503),
          "not-ready": ("ModelNotReadyException", 429)}


def alias(model_id, runs_on, body_format, **extra):
    return {"modelId": model_id, "runsOn": runs_on, "bodyFormat": body_format, **extra}


ALIASES = [
    alias(HAIKU, TEXT, "anthropic-messages", modelName="Claude 3 Haiku", providerName="Anthropic"),
    alias(TITAN_TEXT, TEXT, "titan-text"),
    alias(MISTRAL, TEXT, "mistral"),
    alias(LLAMA, TEXT, "meta-llama"),
    alias(TITAN_V1, EMBED, "titan-embed-v1"),
    alias(TITAN_V2, EMBED, "titan-embed-v2"),
    alias(COHERE, EMBED, "cohere-embed"),
    alias(THROTTLED, TEXT, "meta-llama", faults={"throttle": {"every": 3}}),
    alias(SEEDED, TEXT, "meta-llama", faults={"throttle": {"rate": 0.4, "seed": 11}}),
    alias(ERRORING, TEXT, "meta-llama", faults={"errors": {"fault": "timeout", "every": 4}}),
    alias(THROTTLED_EMBED, EMBED, "titan-embed-v2", faults={"throttle": {"every": 2}}),
    alias(FAILING_JOB, TEXT, "meta-llama", faults={"job": {"action": "fail", "afterRecords": 250}}),
    alias(STOPPING_JOB, TEXT, "meta-llama", faults={"job": {"action": "stop", "afterRecords": 300}}),
    alias(TIMEOUT_JOB, EMBED, "titan-embed-v2", faults={"job": {"action": "timeout", "afterRecords": 100}}),
]


# ------------------------------------------------------------------------------------------
# the documented functions, written out again here so the tests check the module against them


def reverse(text: str, max_tokens: int = 512) -> str:
    return " ".join(text.split()[::-1][:max_tokens])


def feature(word: str, size: int) -> tuple[int, float]:
    key = word.lower().strip("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") or word.lower()
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % size, -1.0 if digest[8] & 1 else 1.0


def embedding(text: str, size: int = 1024, normalize: bool = True) -> list[float]:
    vector = [0.0] * size
    for word in text.split():
        index, sign = feature(word, size)
        vector[index] += sign
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if normalize and norm else vector


def uniform(seed: int, n: int) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}:{n}".encode()).digest()[:8], "big") / 2.0 ** 64


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def prompt(text: str, max_tokens: int = 512, stops=(), **sampling) -> TextRequest:
    return TextRequest(messages=None, prompt=text, system=None, max_tokens=max_tokens,
                       temperature=sampling.get("temperature", 0.5), top_p=sampling.get("top_p", 0.9),
                       stop_sequences=list(stops))


# ------------------------------------------------------------------------------------------
# engine level


def test_the_answer_is_the_prompts_words_reversed_with_honest_counts():
    model = stub_models.StubTextModel()
    [result] = model.generate([prompt(SENTENCE)])
    assert result.text == "world wide whole the to hello Say" == reverse(SENTENCE)
    assert (result.input_tokens, result.output_tokens, result.stop_reason) == (7, 7, "end_turn")
    [cut] = model.generate([prompt(SENTENCE, max_tokens=3)])
    assert (cut.text, cut.output_tokens, cut.stop_reason) == ("world wide whole", 3, "max_tokens")
    [exact] = model.generate([prompt(SENTENCE, max_tokens=7)])
    assert (exact.text, exact.stop_reason) == (reverse(SENTENCE), "end_turn")
    assert model.count_tokens("  two\twords\n") == 2


def test_chat_answers_the_last_user_message_and_counts_every_word_read():
    request = parse_invoke("anthropic-messages", {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "system": "Be brief please",
        "messages": [{"role": "user", "content": "first question here"},
                     {"role": "assistant", "content": "an answer"},
                     {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "one"}]},
                     {"role": "assistant", "content": "Prefill"}]}).text
    [result] = stub_models.StubTextModel().generate([request])
    assert result.text == "one second"  # the last user message; the assistant prefill is ignored
    assert result.input_tokens == 3 + 3 + 2 + 2 + 1 and result.output_tokens == 2


def test_stop_sequences_cut_the_text_like_the_real_generator():
    model = stub_models.StubTextModel()
    [result] = model.generate([prompt(SENTENCE, stops=["to", "zzz"])])
    # "world wide whole the to ..." -> cut right before "to"; the words through the stop are counted
    assert (result.text, result.stop_reason, result.stop_sequence, result.output_tokens) == \
        ("world wide whole the ", "stop_sequence", "to", 5)
    [inside] = model.generate([prompt(SENTENCE, stops=["ide"])])  # a stop inside a word cuts the word
    assert (inside.text, inside.output_tokens, inside.stop_sequence) == ("world w", 2, "ide")
    [first] = model.generate([prompt(SENTENCE, stops=["hello", "whole"])])  # the earliest one wins
    assert (first.text, first.stop_sequence) == ("world wide ", "whole")
    [unseen] = model.generate([prompt(SENTENCE, max_tokens=2, stops=["whole"])])  # past max_tokens: never seen
    assert (unseen.text, unseen.stop_reason) == ("world wide", "max_tokens")


def test_sampling_parameters_and_seeds_change_nothing():
    model = stub_models.StubTextModel()
    answers = {model.generate([prompt(SENTENCE, temperature=t, top_p=p)], seed=seed)[0].text
               for t in (0.0, 0.7, 1.0) for p in (0.1, 1.0) for seed in (0, 99)}
    assert answers == {reverse(SENTENCE)}


def test_an_empty_prompt_is_a_format_error_like_the_real_models():
    [error] = stub_models.StubTextModel().generate([prompt("   \n ")])
    assert isinstance(error, FormatError) and "empty" in str(error)


def test_streaming_sends_one_delta_per_word_then_the_result():
    model = stub_models.StubTextModel()
    from bedrock_local.engine.continuous import Finished, TextDelta

    model.start()
    events = []
    model.submit(prompt(SENTENCE), events.append)
    assert [type(e) for e in events] == [TextDelta] * 7 + [Finished]
    assert [e.text for e in events[:-1]] == ["world", " wide", " whole", " the", " to", " hello", " Say"]
    assert events[-1].result == model.generate([prompt(SENTENCE)])[0]
    events.clear()
    model.submit(prompt(SENTENCE, stops=["to"]), events.append)
    assert "".join(e.text for e in events[:-1]) == events[-1].result.text == "world wide whole the "
    assert model.active == 0
    model.close(drain=True)
    with pytest.raises(RuntimeError):
        model.submit(prompt(SENTENCE), events.append)


TOOL_SCHEMA = {"type": "object", "required": ["city", "unit", "days", "tags", "exact", "ok"],
               "properties": {"city": {"type": "string", "minLength": 12, "maxLength": 14},
                              "unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer", "minimum": 9,
                                                                                    "maximum": 12},
                              "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                              "exact": {"const": 7}, "ok": {"type": "boolean"}, "left_out": {"type": "string"}}}


def tools_request(messages, choice="auto", name=None) -> TextRequest:
    tools = [{"name": "weather", "description": "", "input_schema": TOOL_SCHEMA},
             {"name": "song", "description": "", "input_schema": {"type": "object", "properties": {}}}]
    return TextRequest(messages=messages, prompt=None, system=None, max_tokens=100, temperature=0.5, top_p=0.9,
                       tools=tools, tool_choice=choice, tool_name=name)


def test_a_request_with_tools_gets_a_schema_valid_call_the_same_every_time():
    import jsonschema

    ask = [{"role": "user", "content": "Weather in Paris please"}]
    [first, second] = stub_models.StubTextModel().generate([tools_request(ask, "tool", "weather")] * 2)
    assert first.stop_reason == second.stop_reason == "tool_use" and first.text == ""
    (call,) = first.tool_calls
    assert call["name"] == "weather" and call["input"] == second.tool_calls[0]["input"]
    jsonschema.validate(call["input"], TOOL_SCHEMA)
    assert set(call["input"]) == set(TOOL_SCHEMA["required"])  # required properties only
    assert call["input"]["exact"] == 7 and call["input"]["days"] == 9 and len(call["input"]["tags"]) == 2
    assert call["toolUseId"] != second.tool_calls[0]["toolUseId"]
    # any / auto: a tool chosen by sha256 of the last user text; auto after a tool result: text
    [any_call] = stub_models.StubTextModel().generate([tools_request(ask, "any")])
    assert any_call.tool_calls[0]["name"] == ["weather", "song"][
        int.from_bytes(hashlib.sha256(b"please Paris in Weather").digest()[:8], "big") % 2]
    loop = ask + [{"role": "assistant", "content": "", "tool_calls": [{"id": "t1", "name": "song", "arguments": {}}]},
                  {"role": "tool", "tool_call_id": "t1", "name": "song", "content": "sunny and warm"}]
    [answer] = stub_models.StubTextModel().generate([tools_request(loop)])
    assert (answer.text, answer.stop_reason, answer.tool_calls) == ("warm and sunny", "end_turn", [])
    # every word read counts: the tools' JSON and the call's text included
    assert answer.input_tokens == sum(len((t or "").split()) for t in stub_models.request_texts(tools_request(loop)))
    assert answer.input_tokens > len("Weather in Paris please sunny and warm".split()) + 10


def test_a_streamed_call_sends_its_start_and_input_pieces():
    from bedrock_local.engine.continuous import Finished, ToolInputDelta, ToolUseStart

    events = []
    stub_models.StubTextModel().submit(tools_request([{"role": "user", "content": "go"}], "tool", "weather"),
                                       events.append)
    assert [type(e) for e in events] == [ToolUseStart, ToolInputDelta, ToolInputDelta, Finished]
    (call,) = events[-1].result.tool_calls
    assert (events[0].tool_use_id, events[0].name) == (call["toolUseId"], "weather")
    assert json.loads(events[1].text + events[2].text) == call["input"]


def test_embeddings_hash_words_deterministically():
    model = stub_models.StubEmbeddingModel()
    texts = ["The cat sat on the mat.", "the cat sat on a mat", "Quarterly revenue grew strongly"]
    a, b, c = model.embed([EmbeddingRequest(text) for text in texts])
    assert a.vector == embedding(texts[0]) and len(a.vector) == 1024
    assert math.isclose(math.fsum(x * x for x in a.vector), 1.0)
    assert (a.input_tokens, b.input_tokens, c.input_tokens) == (6, 6, 4)
    assert cosine(a.vector, b.vector) > 0.8 > 0.2 > abs(cosine(a.vector, c.vector))  # shared words, shared coordinates
    [raw] = model.embed([EmbeddingRequest("the cat the", normalize=False)])
    index, sign = feature("the", 1024)
    assert raw.vector[index] == 2 * sign and sum(abs(x) for x in raw.vector) == 3
    [small] = model.embed([EmbeddingRequest(texts[0], dimensions=256)])
    assert small.vector == embedding(texts[0], 256)
    [empty] = model.embed([EmbeddingRequest("")])
    assert empty.vector == [0.0] * 1024 and empty.input_tokens == 0
    # the same vectors in a fresh process: nothing depends on the process's hash seed
    code = ("import json; from bedrock_local.engine.stub_models import hash_embedding; "
            f"print(json.dumps(hash_embedding({texts[0]!r})))")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert json.loads(fresh.stdout) == a.vector


def test_the_test_models_import_no_torch():
    code = ("import sys; from bedrock_local.jobs.model_sources import ModelSource, weightless_engine; "
            "from bedrock_local.engine.formats import TextRequest, EmbeddingRequest; "
            f"t = weightless_engine(ModelSource({TEXT!r}, 'text', foundation_model_id={TEXT!r})); "
            f"e = weightless_engine(ModelSource({EMBED!r}, 'embedding', foundation_model_id={EMBED!r})); "
            "t.generate([TextRequest(None, 'a b', None, 5, 0.5, 0.9)]); e.embed([EmbeddingRequest('a b')]); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(type(t).__name__, type(e).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["StubTextModel", "StubEmbeddingModel"]


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_directive_injects_its_fault(name):
    code, status = FAULTS[name]
    text = f"please fail [[fault:{name}]] now"
    [fault] = stub_models.StubTextModel().generate([prompt(text)])
    assert isinstance(fault, stub_models.InjectedFault)
    assert (fault.code, fault.status) == (code, status) and "injected fault" in fault.message
    with pytest.raises(stub_models.InjectedFault) as raised:
        stub_models.StubTextModel().submit(prompt(text), lambda event: None)
    assert raised.value.code == code
    [embedded] = stub_models.StubEmbeddingModel().embed([EmbeddingRequest(text)])
    assert isinstance(embedded, stub_models.InjectedFault) and embedded.code == code


def test_unknown_and_job_directives():
    [unknown] = stub_models.StubTextModel().generate([prompt("x [[fault:explode]]")])
    assert isinstance(unknown, FormatError) and "explode" in str(unknown) and "model-error" in str(unknown)
    [job] = stub_models.StubTextModel().generate([prompt("x [[fault:job-stop]]")])  # a batch job's, not a request's
    assert job.text == "[[fault:job-stop]] x"
    assert stub_models.job_directive({"messages": [{"content": [{"text": "a [[fault:job-timeout]]"}]}]}) == "timeout"
    assert stub_models.job_directive({"prompt": "nothing here"}) is None


def test_fault_rules_are_deterministic():
    faults = stub_models.parse_faults({"throttle": {"every": 3}, "errors": {"fault": "internal", "every": 5}})
    hits = {n: faults.call_fault(n, "m") for n in range(1, 16)}
    assert [n for n, f in hits.items() if f and f.code == "ThrottlingException"] == [3, 6, 9, 12, 15]
    assert [n for n, f in hits.items() if f and f.code == "InternalServerException"] == [5, 10]  # 15: throttled first
    assert [n for n in range(1, 16) if faults.record_fault(n, "m")] == [5, 10, 15]  # records are never throttled
    seeded = stub_models.parse_faults({"throttle": {"rate": 0.3, "seed": 5}})
    expected = [n for n in range(1, 201) if uniform(5, n) < 0.3]
    assert [n for n in range(1, 201) if seeded.call_fault(n, "m")] == expected
    assert 40 <= len(expected) <= 80
    job = stub_models.parse_faults({"job": {"action": "stop", "afterRecords": 10}})

    def job_point(done: int, count: int) -> int | None:
        """Where, among the next `count` records of a job that has processed `done`, the job ends."""
        return next((i for i in range(count) if job.job_signal(done + i + 1, "m") is not None), None)

    assert [job_point(0, 8), job_point(8, 8), job_point(10, 5), job_point(12, 5)] == [None, 2, 0, 0]
    assert job.job_signal(11, "m").action == "stop" and "after 10 records" in job.job_signal(11, "m").message


@pytest.mark.parametrize("faults,field", [
    ("throttle", "must be an object"),
    ({"throttle": {"every": 0}}, "faults.throttle.every"),
    ({"throttle": {"every": 2, "rate": 0.5}}, "exactly one"),
    ({"throttle": {"rate": 1.5}}, "faults.throttle.rate"),
    ({"errors": {"fault": "explode", "every": 2}}, "faults.errors.fault"),
    ({"job": {"action": "crash", "afterRecords": 2}}, "faults.job.action"),
    ({"job": {"action": "fail", "afterRecords": -1}}, "faults.job.afterRecords"),
    ({"slow": {}}, "unknown field"),
])
def test_bad_fault_settings_name_the_field(faults, field):
    with pytest.raises(aliases.AliasError) as raised:
        aliases.alias_model(alias("acme.flaky-v1:0", TEXT, "meta-llama", faults=faults), "aliases[0]")
    assert field in str(raised.value) and "aliases[0] (acme.flaky-v1:0)" in str(raised.value)


def test_alias_file_rules_for_test_models():
    flaky = aliases.alias_model(alias("acme.flaky-v1:0", TEXT, "anthropic-messages",
                                      faults={"throttle": {"every": 2}}), "e")
    assert flaky.runs_on == TEXT and flaky.kind == "text" and flaky.faults.throttle.every == 2
    with pytest.raises(aliases.AliasError, match="customizationsSupported must be empty"):
        aliases.alias_model(alias("acme.t-v1:0", TEXT, "meta-llama", customizationsSupported=["FINE_TUNING"]), "e")
    with pytest.raises(aliases.AliasError, match="faults are injected by the test models only"):
        aliases.alias_model(alias("acme.t-v1:0", aliases.SMOLLM2, "meta-llama", faults={}), "e")
    with pytest.raises(aliases.AliasError, match="bodyFormat"):
        aliases.alias_model(alias("acme.t-v1:0", EMBED, "meta-llama"), "e")
    with pytest.raises(aliases.AliasError, match="names a packaged or test model itself"):
        aliases.alias_model(alias(TEXT, TEXT, "meta-llama"), "e")


# ------------------------------------------------------------------------------------------
# through boto3 against a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("test-models")
    aliases_file = folder / "aliases.json"
    aliases_file.write_text(json.dumps({"aliases": ALIASES}))
    server = Server(folder / "data", extra_args=("--model-aliases", str(aliases_file))).start()
    server.folder(OUT_BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime(server):
    """No retries at all (botocore's `max_attempts` counts retries in its legacy mode): every fault is seen."""
    return server.client(service="bedrock-runtime", retries={"total_max_attempts": 1, "mode": "standard"})


def failure(call, **kwargs) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def invoke(runtime, model_id: str, body: dict) -> dict:
    return json.loads(runtime.invoke_model(modelId=model_id, body=json.dumps(body))["body"].read())


def stream(runtime, model_id: str, body: dict) -> list[dict]:
    response = runtime.invoke_model_with_response_stream(modelId=model_id, body=json.dumps(body))
    return [json.loads(event["chunk"]["bytes"]) for event in response["body"]]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"text": text}]}]


def test_both_test_models_are_listed(bedrock):
    summaries = {m["modelId"]: m for m in bedrock.list_foundation_models()["modelSummaries"]}
    text, embed = summaries[TEXT], summaries[EMBED]
    assert text["providerName"] == embed["providerName"] == "bedrock-local"
    assert text["outputModalities"] == ["TEXT"] and text["responseStreamingSupported"] is True
    assert embed["outputModalities"] == ["EMBEDDING"] and embed["responseStreamingSupported"] is False
    assert text["customizationsSupported"] == embed["customizationsSupported"] == []
    ours = {m["modelId"] for m in bedrock.list_foundation_models(byProvider="bedrock-local")["modelSummaries"]}
    assert {TEXT, EMBED} <= ours
    details = bedrock.get_foundation_model(modelIdentifier=TEXT)["modelDetails"]
    assert details["modelArn"] == f"arn:aws:bedrock:us-east-1::foundation-model/{TEXT}"


def test_converse_answers_exactly(runtime):
    answer = runtime.converse(modelId=TEXT, messages=user(SENTENCE), system=[{"text": "Be kind"}],
                              inferenceConfig={"maxTokens": 5, "temperature": 0.9})
    assert answer["output"]["message"] == {"role": "assistant", "content": [{"text": "world wide whole the to"}]}
    assert answer["stopReason"] == "max_tokens"
    assert answer["usage"] == {"inputTokens": 9, "outputTokens": 5, "totalTokens": 14}
    stopped = runtime.converse(modelId=HAIKU, messages=user(SENTENCE), inferenceConfig={"stopSequences": ["hello"]})
    assert stopped["output"]["message"]["content"][0]["text"] == "world wide whole the to "
    assert stopped["stopReason"] == "stop_sequence" and stopped["usage"]["outputTokens"] == 6


def test_converse_stream_sends_a_delta_per_word(runtime):
    events = [next(iter(e.items())) for e in runtime.converse_stream(modelId=TEXT, messages=user(SENTENCE))["stream"]]
    names = [name for name, _ in events]
    assert names == ["messageStart"] + ["contentBlockDelta"] * 7 + ["contentBlockStop", "messageStop", "metadata"]
    deltas = [body["delta"]["text"] for name, body in events if name == "contentBlockDelta"]
    assert deltas == ["world", " wide", " whole", " the", " to", " hello", " Say"]
    assert events[-2][1] == {"stopReason": "end_turn"}
    assert events[-1][1]["usage"] == {"inputTokens": 7, "outputTokens": 7, "totalTokens": 14}


ANSWER = reverse(SENTENCE)
TEXT_BODIES = [
    (TEXT, {"prompt": SENTENCE, "max_gen_len": 4},
     {"generation": "world wide whole the", "prompt_token_count": 7, "generation_token_count": 4,
      "stop_reason": "length"}),
    (LLAMA, {"prompt": SENTENCE, "temperature": 0.2, "top_p": 0.5},
     {"generation": ANSWER, "prompt_token_count": 7, "generation_token_count": 7, "stop_reason": "stop"}),
    (TITAN_TEXT, {"inputText": SENTENCE, "textGenerationConfig": {"maxTokenCount": 100, "stopSequences": ["the"]}},
     {"inputTextTokenCount": 7, "results": [{"tokenCount": 4, "outputText": "world wide whole ",
                                             "completionReason": "STOP_CRITERIA_MET"}]}),
    (MISTRAL, {"prompt": SENTENCE, "max_tokens": 3, "top_k": 50},
     {"outputs": [{"text": "world wide whole", "stop_reason": "length"}]}),
    (HAIKU, {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "system": "Be kind",
             "messages": [{"role": "user", "content": [{"type": "text", "text": SENTENCE}]}],
             "stop_sequences": ["hello"]},
     {"type": "message", "role": "assistant", "model": HAIKU,
      "content": [{"type": "text", "text": "world wide whole the to "}], "stop_reason": "stop_sequence",
      "stop_sequence": "hello", "usage": {"input_tokens": 9, "output_tokens": 6}}),
]


@pytest.mark.parametrize("model_id,body,expected", TEXT_BODIES, ids=[m for m, _, _ in TEXT_BODIES])
def test_every_text_body_format_round_trips_exactly(runtime, model_id, body, expected):
    answer = invoke(runtime, model_id, body)
    if model_id == HAIKU:
        assert answer.pop("id").startswith("msg_bdrk_")
    assert answer == expected


STREAM_CHECKS = {
    TEXT: lambda chunks: ("".join(c["generation"] for c in chunks), chunks[-1]["generation_token_count"]),
    LLAMA: lambda chunks: ("".join(c["generation"] for c in chunks), chunks[-1]["generation_token_count"]),
    TITAN_TEXT: lambda chunks: ("".join(c["outputText"] for c in chunks), chunks[-1]["totalOutputTextTokenCount"]),
    MISTRAL: lambda chunks: ("".join(c["outputs"][0]["text"] for c in chunks), None),
    HAIKU: lambda chunks: ("".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta"),
                           next(c for c in chunks if c["type"] == "message_delta")["usage"]["output_tokens"]),
}


@pytest.mark.parametrize("model_id,body,expected", TEXT_BODIES, ids=[m for m, _, _ in TEXT_BODIES])
def test_every_text_body_format_streams_the_same_answer(runtime, model_id, body, expected):
    chunks = stream(runtime, model_id, body)
    whole = invoke(runtime, model_id, body)
    text, tokens = STREAM_CHECKS[model_id](chunks)
    words = len(text.split())
    assert len(chunks) >= words + 1  # a chunk per word, then the closing one(s)
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    if model_id == HAIKU:
        assert text == whole["content"][0]["text"] and tokens == whole["usage"]["output_tokens"]
    elif model_id == TITAN_TEXT:
        assert text == whole["results"][0]["outputText"] and tokens == whole["results"][0]["tokenCount"]
    elif model_id == MISTRAL:
        assert text == whole["outputs"][0]["text"]
        assert chunks[-1]["outputs"][0]["stop_reason"] == whole["outputs"][0]["stop_reason"]
    else:
        assert text == whole["generation"] and tokens == whole["generation_token_count"]
    assert metrics["inputTokenCount"] == 7 + (2 if model_id == HAIKU else 0)


def test_every_embedding_body_format_round_trips_exactly(runtime):
    text = "The quick brown fox jumps"
    assert invoke(runtime, EMBED, {"inputText": text}) == {"embedding": embedding(text), "inputTextTokenCount": 5}
    assert invoke(runtime, EMBED, {"inputText": text, "normalize": False})["embedding"] == \
        embedding(text, normalize=False)
    assert invoke(runtime, TITAN_V1, {"inputText": text}) == \
        {"embedding": embedding(text, 1536, normalize=False), "inputTextTokenCount": 5}
    v2 = invoke(runtime, TITAN_V2, {"inputText": text, "dimensions": 256, "embeddingTypes": ["float", "binary"]})
    assert v2 == {"embedding": embedding(text, 256), "inputTextTokenCount": 5,
                  "embeddingsByType": {"float": embedding(text, 256),
                                       "binary": [1 if x > 0 else 0 for x in embedding(text, 256)]}}
    assert invoke(runtime, TITAN_V2, {"inputText": text})["embedding"] == embedding(text, 1024)
    texts = ["first text here", "a second one", ""]
    cohere = invoke(runtime, COHERE, {"texts": texts, "input_type": "search_document"})
    assert cohere.pop("id")
    assert cohere == {"response_type": "embeddings_floats", "embeddings": [embedding(t) for t in texts],
                      "texts": texts}
    typed = invoke(runtime, COHERE, {"texts": texts[:1], "input_type": "search_query", "embedding_types": ["float"]})
    assert typed["response_type"] == "embeddings_by_type" and typed["embeddings"] == {"float": [embedding(texts[0])]}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_runtime_directive_answers_its_exception(runtime, name):
    code, status = FAULTS[name]
    for call, kwargs in [
        (runtime.converse, dict(modelId=TEXT, messages=user(f"hi [[fault:{name}]]"))),
        (runtime.converse_stream, dict(modelId=HAIKU, messages=user(f"[[fault:{name}]] hi"))),
        (runtime.invoke_model, dict(modelId=MISTRAL, body=json.dumps({"prompt": f"x [[fault:{name}]]"}))),
        (runtime.invoke_model_with_response_stream,
         dict(modelId=TITAN_TEXT, body=json.dumps({"inputText": f"x [[fault:{name}]]"}))),
        (runtime.invoke_model, dict(modelId=COHERE, body=json.dumps(
            {"texts": ["fine", f"y [[fault:{name}]]"], "input_type": "clustering"}))),
    ]:
        got_code, got_status, message = failure(call, **kwargs)
        assert (got_code, got_status) == (code, status), (call, got_code, got_status)
        assert f"injected fault '{name}'" in message and f"[[fault:{name}]]" in message


def test_throttling_every_third_call(runtime):
    outcomes = []
    for n in range(1, 10):
        try:
            outcomes.append(invoke(runtime, THROTTLED, {"prompt": f"call {n}"})["generation"])
        except ClientError as error:
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            assert "this was call" in error.response["Error"]["Message"]
            outcomes.append(error.response["Error"]["Code"])
    assert outcomes == ["1 call", "2 call", "ThrottlingException", "4 call", "5 call", "ThrottlingException",
                        "7 call", "8 call", "ThrottlingException"]


def test_throttling_at_a_seeded_rate(runtime):
    throttled = []
    for n in range(1, 31):
        try:
            runtime.converse(modelId=SEEDED, messages=user("hello"))
        except ClientError as error:
            assert error.response["Error"]["Code"] == "ThrottlingException"
            throttled.append(n)
    assert throttled == [n for n in range(1, 31) if uniform(11, n) < 0.4]
    assert 0 < len(throttled) < 30


def test_embedding_calls_are_throttled_too(runtime):
    codes = []
    for _ in range(4):
        try:
            invoke(runtime, THROTTLED_EMBED, {"inputText": "hello"})
            codes.append("ok")
        except ClientError as error:
            codes.append(error.response["Error"]["Code"])
    assert codes == ["ok", "ThrottlingException", "ok", "ThrottlingException"]


def test_an_error_rule_fails_every_fourth_runtime_call(runtime):
    codes = []
    for _ in range(8):
        try:
            runtime.converse(modelId=ERRORING, messages=user("hi"))
            codes.append("ok")
        except ClientError as error:
            codes.append((error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]))
    timeout = ("ModelTimeoutException", 408)
    assert codes == ["ok", "ok", "ok", timeout, "ok", "ok", "ok", timeout]


# ---- batch jobs


def converse_record(i: int, text: str, max_tokens: int = 64) -> dict:
    return {"recordId": f"r{i:05d}", "modelInput": {"messages": user(text), "inferenceConfig": {"maxTokens": max_tokens}}}


def test_a_thousand_record_job_completes_with_exact_outputs(server, bedrock):
    records = [converse_record(i, f"story number {i} about {'a cat' if i % 2 else 'the sea and the sky'}", 1 + i % 6)
               for i in range(1000)]
    arn = create_job(bedrock, TEXT, put_input(server, {"records.jsonl": records}), invocation_type="Converse")
    job = wait_final(bedrock, arn, timeout=120)
    assert job["status"] == "Completed", job.get("message")
    lines = read_out(job_folder(server, arn) / "records.jsonl.out")
    assert [line["recordId"] for line in lines] == [r["recordId"] for r in records]
    tokens_in = tokens_out = 0
    for record, line in zip(records, lines):
        text = record["modelInput"]["messages"][0]["content"][0]["text"]
        limit = record["modelInput"]["inferenceConfig"]["maxTokens"]
        words = len(text.split())
        output = line["modelOutput"]
        assert output["output"]["message"]["content"][0]["text"] == reverse(text, limit)
        assert output["stopReason"] == ("max_tokens" if limit < words else "end_turn")
        assert output["usage"] == {"inputTokens": words, "outputTokens": min(limit, words),
                                   "totalTokens": words + min(limit, words)}
        tokens_in, tokens_out = tokens_in + words, tokens_out + min(limit, words)
    manifest = read_manifest(job_folder(server, arn))
    assert manifest == {"totalRecordCount": 1000, "processedRecordCount": 1000, "successRecordCount": 1000,
                        "errorRecordCount": 0, "inputTokenCount": tokens_in, "outputTokenCount": tokens_out}


def test_embedding_formats_in_a_batch_job(server, bedrock):
    uri = put_input(server, {"v2.jsonl": [{"recordId": "a", "modelInput": {"inputText": "red apple", "dimensions": 512}},
                                          {"recordId": "b", "modelInput": {"inputText": "green apple"}}]})
    arn = create_job(bedrock, TITAN_V2, uri)
    assert wait_final(bedrock, arn, timeout=60)["status"] == "Completed"
    a, b = read_out(job_folder(server, arn) / "v2.jsonl.out")
    assert a["modelOutput"]["embedding"] == embedding("red apple", 512)
    assert b["modelOutput"]["embedding"] == embedding("green apple", 1024)
    assert a["modelOutput"]["inputTextTokenCount"] == 2
    uri = put_input(server, {"c.jsonl": [{"recordId": "c", "modelInput": {"texts": ["one two", "three"],
                                                                          "input_type": "search_document"}}]})
    arn = create_job(bedrock, COHERE, uri)
    assert wait_final(bedrock, arn, timeout=60)["status"] == "Completed"
    [line] = read_out(job_folder(server, arn) / "c.jsonl.out")
    assert line["modelOutput"]["embeddings"] == [embedding("one two"), embedding("three")]
    assert read_manifest(job_folder(server, arn))["inputTokenCount"] == 3


def test_record_faults_become_error_lines_with_their_codes(server, bedrock):
    names = sorted(FAULTS)
    records = [converse_record(i, f"record {i} [[fault:{names[i // 2]}]]" if i % 2 else f"record {i} fine")
               for i in range(2 * len(names))]
    records.append({"recordId": "unknown", "modelInput": {"messages": user("[[fault:job-nothing]]")}})
    arn = create_job(bedrock, TEXT, put_input(server, {"f.jsonl": records}), invocation_type="Converse")
    job = wait_final(bedrock, arn, timeout=60)
    assert job["status"] == "Completed"
    lines = read_out(job_folder(server, arn) / "f.jsonl.out")
    for i, line in enumerate(lines[:-1]):
        if i % 2:
            name = names[i // 2]
            assert line["error"]["errorCode"] == FAULTS[name][1]
            assert f"injected fault '{name}'" in line["error"]["errorMessage"]
            assert line["modelInput"] == records[i]["modelInput"] and "modelOutput" not in line
        else:
            assert line["modelOutput"]["output"]["message"]["content"][0]["text"] == f"fine {i} record"
    assert lines[-1]["error"]["errorCode"] == 400 and "job-nothing" in lines[-1]["error"]["errorMessage"]
    assert (job["successRecordCount"], job["errorRecordCount"]) == (len(names), len(names) + 1)


def test_an_error_rule_fails_every_fourth_record_of_each_job(server, bedrock):
    files = {"a.jsonl": [converse_record(i, f"a {i}") for i in range(6)],
             "b.jsonl": [converse_record(i, f"b {i}") for i in range(6, 11)]}
    for _ in range(2):  # the count starts again with each job
        arn = create_job(bedrock, ERRORING, put_input(server, files),
                         invocation_type="Converse")
        assert wait_final(bedrock, arn, timeout=60)["status"] == "Completed"
        lines = read_out(job_folder(server, arn) / "a.jsonl.out") + read_out(job_folder(server, arn) / "b.jsonl.out")
        failed = [n for n, line in enumerate(lines, 1) if "error" in line]
        assert failed == [4, 8]  # records counted across the job's files, in order
        assert {lines[n - 1]["error"]["errorCode"] for n in failed} == {408}
        assert "this was record 4" in lines[3]["error"]["errorMessage"]


def test_a_job_fails_after_the_configured_records(server, bedrock):
    records = [{"recordId": f"r{i}", "modelInput": {"prompt": f"line {i}"}} for i in range(400)]
    arn = create_job(bedrock, FAILING_JOB, put_input(server, {"in.jsonl": records}))
    job = wait_final(bedrock, arn, timeout=60)
    assert job["status"] == "Failed"
    assert "injected fault" in job["message"] and "fail after 250 records" in job["message"]
    lines = read_out(job_folder(server, arn) / "in.jsonl.out")  # the finished records are kept
    assert [line["recordId"] for line in lines] == [f"r{i}" for i in range(250)]
    assert lines[-1]["modelOutput"]["generation"] == "249 line"


def test_a_job_stops_after_the_configured_records(server, bedrock):
    records = [{"recordId": f"r{i}", "modelInput": {"prompt": f"line {i}"}} for i in range(500)]
    arn = create_job(bedrock, STOPPING_JOB, put_input(server, {"in.jsonl": records}))
    job = wait_final(bedrock, arn, timeout=60)
    assert job["status"] == "Stopped"
    assert job["message"].startswith("The job was stopped.") and "injected fault" in job["message"]
    assert (job["processedRecordCount"], job["successRecordCount"]) == (300, 300)
    assert read_manifest(job_folder(server, arn))["processedRecordCount"] == 300
    assert len(read_out(job_folder(server, arn) / "in.jsonl.out")) == 300


def test_a_job_times_out_after_the_configured_records(server, bedrock):
    records = [{"recordId": f"r{i}", "modelInput": {"inputText": f"text {i}"}} for i in range(400)]
    arn = create_job(bedrock, TIMEOUT_JOB, put_input(server, {"in.jsonl": records}))
    job = wait_final(bedrock, arn, timeout=60)
    assert job["status"] == "PartiallyCompleted"
    assert job["message"].startswith("The job reached its timeout of 24 hours with 300 records not processed.")
    assert "injected fault" in job["message"]
    assert job["processedRecordCount"] == 100
    manifest = read_manifest(job_folder(server, arn))
    assert (manifest["totalRecordCount"], manifest["processedRecordCount"]) == (400, 100)


@pytest.mark.parametrize("action,status", [("fail", "Failed"), ("stop", "Stopped"), ("timeout", "PartiallyCompleted")])
def test_a_record_can_end_its_job(server, bedrock, action, status):
    records = [converse_record(i, f"record {i}") for i in range(20)]
    records[7] = converse_record(7, f"the end [[fault:job-{action}]]")
    arn = create_job(bedrock, TEXT, put_input(server, {"in.jsonl": records}), invocation_type="Converse")
    job = wait_final(bedrock, arn, timeout=60)
    assert job["status"] == status
    assert "'r00007'" in job["message"] and f"[[fault:job-{action}]]" in job["message"]
    lines = read_out(job_folder(server, arn) / "in.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"r{i:05d}" for i in range(7)]
    if status != "Failed":
        assert job["processedRecordCount"] == 7


def test_a_test_model_cannot_be_customized(server, bedrock):
    params = dict(jobName=unique("ft"), customModelName=unique("ft"), roleArn=ROLE, baseModelIdentifier=TEXT,
                  trainingDataConfig={"s3Uri": "s3://nope/train.jsonl"}, outputDataConfig={"s3Uri": "s3://nope/out/"},
                  hyperParameters={"epochCount": "1"})
    try:  # refused at Create, or by the job before it reads anything (customizationsSupported is empty)
        arn = bedrock.create_model_customization_job(**params)["jobArn"]
    except ClientError as error:
        assert error.response["Error"]["Code"] == "ValidationException"
        return
    from conftest import wait_until

    job = wait_until(lambda: (lambda j: j if j["status"] in ("Failed", "Completed", "Stopped") else None)(
        bedrock.get_model_customization_job(jobIdentifier=arn)), timeout=60, what="the customization job to end")
    assert job["status"] == "Failed" and "does not support FINE_TUNING" in job["failureMessage"]
