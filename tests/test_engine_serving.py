"""Engine serving: the continuous batcher in-process (no server) on a tiny random Llama and on the
real SmolLM2. Results equal TextGenerator's for the same request (greedy alone, greedy while other
requests join and leave, seeded sampling); streamed deltas concatenate to the final text and never
show a stop sequence or half a character; max_tokens, EOS, cancel, close (drain or not), errors
from submit, a failing handler, a failing or out-of-memory model step."""

import copy
import os
import threading

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bedrock_local.engine.catalog import find_foundation_model, packaged_weights  # noqa: E402
from bedrock_local.engine.continuous import ContinuousBatcher, Failed, Finished, TextDelta, _Live  # noqa: E402
from bedrock_local.engine.formats import FormatError, TextRequest, TextResult  # noqa: E402
from bedrock_local.engine.generation import TextGenerator, _Row  # noqa: E402

MINILM_ID = "sentence-transformers.all-minilm-l6-v2-v1:0"
SMOLLM_ID = "huggingface.smollm2-135m-instruct-v1:0"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
PROMPTS = ["hello", "the quick brown fox jumps over the lazy dog", "what is the capital of france?",
           "one two three four five six seven eight nine ten eleven twelve", "a", "machine learning is fun"]
WAIT = 120  # seconds: a bound against hangs, never a timing assertion


def chat(text, max_tokens=12, temperature=0.0, top_p=1.0, stops=(), system=None):
    return TextRequest(messages=[{"role": "user", "content": text}], prompt=None, system=system,
                       max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop_sequences=list(stops))


def raw(text, max_tokens=12):
    return TextRequest(messages=None, prompt=text, system=None, max_tokens=max_tokens, temperature=0.0, top_p=1.0)


class Events:
    """What one request's on_event received; `gate` (optional) is called on each delta, on the
    loop thread, before it is recorded."""

    def __init__(self, gate=None):
        self.events: list = []
        self.done = threading.Event()
        self.gate = gate

    def __call__(self, event):
        if isinstance(event, TextDelta) and self.gate:
            self.gate(self, event)
        self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            assert not self.done.is_set(), "a second final event"
            self.done.set()

    def wait(self):
        assert self.done.wait(WAIT), "no final event"
        return self.final

    @property
    def final(self):
        return self.events[-1]

    @property
    def deltas(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, TextDelta)]

    @property
    def result(self) -> TextResult:
        final = self.wait()
        assert isinstance(final, Finished), final
        assert "".join(self.deltas) == final.result.text  # the stream is the text, always
        assert all(isinstance(e, TextDelta) for e in self.events[:-1])
        return final.result


def same(a: TextResult, b: TextResult) -> bool:
    return (a.text, a.input_tokens, a.output_tokens, a.stop_reason) == (b.text, b.input_tokens, b.output_tokens,
                                                                        b.stop_reason)


def serve(batcher, requests, seed=0):
    """Submit all at once; answers their Events, finished."""
    events = [Events() for _ in requests]
    for request, on_event in zip(requests, events):
        batcher.submit(request, on_event, seed=seed)
    for on_event in events:
        on_event.wait()
    return events


# --------------------------------------------------------------------------------------------
# a tiny random Llama


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
def tiny_model(tiny_tokenizer):
    return tiny_llama(tiny_tokenizer)


@pytest.fixture(scope="module")
def reference(tiny_model, tiny_tokenizer):
    return TextGenerator(tiny_model, tiny_tokenizer, device="cpu")


@pytest.fixture
def batcher(tiny_model, tiny_tokenizer):
    batcher = ContinuousBatcher(tiny_model, tiny_tokenizer, device="cpu")
    batcher.start()
    yield batcher
    batcher.close(drain=False)


def solo(reference, request, seed=0) -> TextResult:
    return reference.generate([request], seed=seed)[0]


def test_greedy_alone_equals_text_generator(batcher, reference):
    requests = [chat(p, max_tokens=20) for p in PROMPTS] + [raw("the capital of france is", max_tokens=15),
                                                            chat("hi", system="be brief", max_tokens=9)]
    for request in requests:
        expected = solo(reference, request)
        result = serve(batcher, [request])[0].result
        assert same(result, expected), (result, expected)
        assert result.input_tokens > 0 and result.output_tokens > 0
        assert result.latency_ms >= 0
    assert batcher.active == 0


def test_concurrent_greedy_equals_solo_and_streams(batcher, reference):
    requests = [chat(p, max_tokens=16) for p in PROMPTS]
    expected = [solo(reference, r) for r in requests]
    assert len({r.text for r in expected}) == len(PROMPTS)  # distinct outputs: a mix-up would show
    events = serve(batcher, requests)
    for on_event, want in zip(events, expected):
        assert same(on_event.result, want)
        if want.output_tokens > 2:
            assert len(on_event.deltas) >= 2  # streamed as it came, not in one piece at the end


def test_max_tokens(batcher, reference):
    limits = [1, 3, 7, 12]
    events = serve(batcher, [chat("machine learning is fun", max_tokens=n) for n in limits])
    results = [e.result for e in events]
    for n, result in zip(limits, results):
        assert (result.output_tokens, result.stop_reason) == (n, "max_tokens")
        assert same(result, solo(reference, chat("machine learning is fun", max_tokens=n)))
    assert results[3].text.startswith(results[2].text) and len(results[3].text) > len(results[1].text) > 0


def test_eos_ends_the_turn(tiny_model, tiny_tokenizer, reference):
    request = chat("the quick brown fox jumps over the lazy dog", max_tokens=10)
    ids = reference.model.generate(torch.tensor([reference.prompt_ids(request)]), max_new_tokens=10,
                                   min_new_tokens=10, do_sample=False, pad_token_id=0)[0, -10:].tolist()
    eos = ids[3]
    model = copy.deepcopy(tiny_model)
    model.generation_config.eos_token_id = [102, eos]
    batcher = ContinuousBatcher(model, tiny_tokenizer, device="cpu")
    batcher.start()
    try:
        result = serve(batcher, [request])[0].result
    finally:
        batcher.close()
    first = ids.index(eos)
    assert (result.stop_reason, result.output_tokens) == ("end_turn", first)  # EOS itself not counted
    assert result.text == tiny_tokenizer.decode(ids[:first], skip_special_tokens=True)
    assert same(result, TextGenerator(model, tiny_tokenizer, device="cpu").generate([request])[0])


def test_stop_sequences_never_streamed(batcher, reference):
    prompt = "what is the capital of france?"
    plain = solo(reference, chat(prompt, max_tokens=20))
    words = plain.text.split()
    assert len(words) >= 4
    stop = words[len(words) // 2]
    cut = plain.text[: plain.text.find(stop)]
    almost = words[2] + " zzzz"  # its start shows in the text, the whole never does
    requests = [chat(prompt, max_tokens=20, stops=["zzzz-not-there", stop]),
                chat(prompt, max_tokens=20, stops=[almost]),
                chat(prompt, max_tokens=20, stops=[words[0]])]  # the very first word: nothing is said
    events = serve(batcher, requests)
    stopped, untouched, nothing = (e.result for e in events)
    assert (stopped.text, stopped.stop_reason) == (cut, "stop_sequence")
    assert 1 <= stopped.output_tokens < plain.output_tokens
    assert same(stopped, solo(reference, requests[0]))
    assert stop not in "".join(events[0].deltas) and all(stop not in d for d in events[0].deltas)
    assert same(untouched, plain) and untouched.stop_reason == "max_tokens"
    assert (nothing.text, nothing.stop_reason) == ("", "stop_sequence") and events[2].deltas == []
    assert same(nothing, solo(reference, requests[2]))


def test_requests_join_and_leave_while_one_runs(tiny_model, tiny_tokenizer, reference):
    long = chat(PROMPTS[3], max_tokens=60)
    assert solo(reference, long).stop_reason == "max_tokens"
    joining = [chat(PROMPTS[0], max_tokens=5), chat(" ".join(["word"] * 40), max_tokens=20),  # a wider prompt
               raw("a", max_tokens=30), chat(PROMPTS[2], max_tokens=8, stops=["zzz"]), chat(PROMPTS[5], max_tokens=1)]
    expected = [solo(reference, r) for r in [long, *joining]]
    batcher = ContinuousBatcher(tiny_model, tiny_tokenizer, device="cpu", max_batch=4)  # one waits for a row
    paused, resume = threading.Event(), threading.Event()

    def hold(on_event, delta):  # the long request's loop thread waits here once, mid-generation
        if len(on_event.deltas) == 5 and not resume.is_set():
            paused.set()
            assert resume.wait(WAIT)

    first = Events(gate=hold)
    batcher.start()
    try:
        batcher.submit(long, first)
        assert paused.wait(WAIT)
        others = [Events() for _ in joining]
        for request, on_event in zip(joining, others):
            batcher.submit(request, on_event)
        assert batcher.active == 1 + len(joining) and not first.done.is_set()
        resume.set()
        results = [e.result for e in [first, *others]]
    finally:
        batcher.close()
    for result, want in zip(results, expected):
        assert same(result, want), (result, want)
    assert batcher.active == 0


def test_cancel(batcher, reference):
    request = chat(PROMPTS[3], max_tokens=60)
    submitted: list = []
    ready = threading.Event()

    def cancel_at_third(on_event, delta):
        if len(on_event.deltas) == 2:
            assert ready.wait(WAIT)
            submitted[0].cancel()

    cancelled = Events(gate=cancel_at_third)
    submitted.append(batcher.submit(request, cancelled))
    ready.set()
    final = cancelled.wait()
    assert final == Failed("cancelled")
    assert len(cancelled.deltas) == 3  # the step that saw the cancel was its last
    assert not any(isinstance(e, Finished) for e in cancelled.events)
    # cancelling a finished request does nothing; the batcher goes on serving
    later = Events()
    done = batcher.submit(chat("hello", max_tokens=4), later)
    assert same(later.result, solo(reference, chat("hello", max_tokens=4)))
    done.cancel()
    assert len(later.events) == len(later.deltas) + 1
    assert batcher.active == 0


def test_cancel_while_queued(tiny_model, tiny_tokenizer):
    batcher = ContinuousBatcher(tiny_model, tiny_tokenizer, device="cpu")
    queued, kept = Events(), Events()
    batcher.submit(chat("hello", max_tokens=5), queued).cancel()
    batcher.submit(chat("hello", max_tokens=5), kept)
    assert batcher.active == 2
    batcher.start()
    assert queued.wait() == Failed("cancelled") and queued.deltas == []
    assert kept.result.output_tokens == 5
    batcher.close()


def test_close_drains(tiny_model, tiny_tokenizer, reference):
    batcher = ContinuousBatcher(tiny_model, tiny_tokenizer, device="cpu", max_batch=2)
    batcher.start()
    requests = [chat(p, max_tokens=12) for p in PROMPTS]
    events = [Events() for _ in requests]
    for request, on_event in zip(requests, events):
        batcher.submit(request, on_event)
    batcher.close(drain=True)
    assert all(e.done.is_set() for e in events) and batcher.active == 0
    for request, on_event in zip(requests, events):
        assert same(on_event.result, solo(reference, request))
    with pytest.raises(RuntimeError):
        batcher.submit(chat("hello"), Events())
    assert not batcher._thread.is_alive()


def test_close_without_drain_fails_what_is_pending(tiny_model, tiny_tokenizer):
    batcher = ContinuousBatcher(tiny_model, tiny_tokenizer, device="cpu", max_batch=1)
    paused, resume = threading.Event(), threading.Event()

    def hold(on_event, delta):
        paused.set()
        assert resume.wait(WAIT)

    running, queued = Events(gate=hold), Events()
    batcher.start()
    batcher.submit(chat(PROMPTS[3], max_tokens=60), running)
    batcher.submit(chat(PROMPTS[1], max_tokens=60), queued)
    assert paused.wait(WAIT)
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False})
    closer.start()
    while not batcher._aborting:  # close() has said so; the loop is still held in the handler
        closer.join(0.01)
    resume.set()
    closer.join(WAIT)
    assert not closer.is_alive() and not batcher._thread.is_alive()
    assert running.wait() == Failed("the model was unloaded") and len(running.deltas) == 1
    assert queued.wait() == Failed("the model was unloaded") and queued.deltas == []
    assert batcher.active == 0
    with pytest.raises(RuntimeError):
        batcher.submit(chat("hello"), Events())
    # never started: close(drain=False) fails the queue on the spot
    idle = ContinuousBatcher(tiny_model, tiny_tokenizer, device="cpu")
    waiting = Events()
    idle.submit(chat("hello"), waiting)
    idle.close(drain=False)
    assert waiting.wait() == Failed("the model was unloaded")


def test_format_errors_raised_by_submit(tiny_model, tiny_tokenizer, batcher):
    called = []
    with pytest.raises(FormatError, match="context of 128 tokens"):
        batcher.submit(chat(" ".join(["word"] * 150), max_tokens=5), called.append)
    with pytest.raises(FormatError, match="context of 128 tokens"):
        batcher.submit(chat("hello", max_tokens=125), called.append)
    with pytest.raises(FormatError, match="max_tokens"):
        batcher.submit(chat("hello", max_tokens=0), called.append)
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    no_template = ContinuousBatcher(tiny_model, plain, device="cpu")
    with pytest.raises(FormatError, match="chat template"):
        no_template.submit(chat("hello"), called.append)
    assert no_template.active == 0 and batcher.active == 0 and called == []
    no_template.close()


def test_seeded_sampling_reproducible_and_same_as_text_generator(batcher, reference):
    sampled = [chat(p, max_tokens=12, temperature=1.0, top_p=top_p)
               for p, top_p in zip(PROMPTS[:4], [1.0, 0.9, 0.5, 1.0])]
    greedy = chat(PROMPTS[4], max_tokens=12)
    first = [e.result for e in serve(batcher, [*sampled, greedy], seed=7)]
    again = [e.result for e in serve(batcher, [greedy, *sampled[::-1]], seed=7)]
    assert [r.text for r in first] == [r.text for r in [*again[1:][::-1], again[0]]]
    other = [e.result for e in serve(batcher, sampled, seed=8)]
    assert [r.text for r in other] != [r.text for r in first[:4]]
    # the same draws as the batch-job engine for the same seed
    for request, result in zip([*sampled, greedy], first):
        assert same(result, solo(reference, request, seed=7))
    assert first[4].text == solo(reference, greedy).text
    assert [r.text for r in first[:4]] != [solo(reference, chat(p, max_tokens=12)).text for p in PROMPTS[:4]]


def test_a_failing_handler_fails_only_its_request(batcher, reference):
    def explode(on_event, delta):
        raise ValueError("client gone")

    broken, fine = Events(gate=explode), Events()
    batcher.submit(chat(PROMPTS[1], max_tokens=20), broken)
    batcher.submit(chat(PROMPTS[2], max_tokens=20), fine)
    final = broken.wait()
    assert isinstance(final, Failed) and "client gone" in final.message
    assert same(fine.result, solo(reference, chat(PROMPTS[2], max_tokens=20)))


def test_model_errors_fail_the_batch_and_serving_goes_on(batcher, reference):
    layer = batcher.model.model.layers[1]
    calls = {"n": 0}

    def broken_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # prefill, one step, then a failing step
            raise RuntimeError("kernel exploded")
        return type(layer).forward(layer, *args, **kwargs)

    layer.forward = broken_forward
    try:
        events = serve(batcher, [chat(PROMPTS[0], max_tokens=10)])
    finally:
        del layer.forward
    assert events[0].final == Failed("generation failed: RuntimeError: kernel exploded")
    assert same(serve(batcher, [chat(PROMPTS[0], max_tokens=10)])[0].result,
                solo(reference, chat(PROMPTS[0], max_tokens=10)))


def test_out_of_memory_fails_the_newest(tiny_model, tiny_tokenizer, reference):
    requests = [chat(p, max_tokens=12) for p in PROMPTS[:4]]
    batcher = ContinuousBatcher(tiny_model, tiny_tokenizer, device="cpu")
    layer = batcher.model.model.layers[1]
    calls = {"n": 0}

    def short_of_memory(*args, **kwargs):  # layer 0 has taken the step already when this fails
        calls["n"] += 1
        if calls["n"] == 3:  # prefill, one step, then out of memory in the second step
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return type(layer).forward(layer, *args, **kwargs)

    events = [Events() for _ in requests]
    for request, on_event in zip(requests, events):
        batcher.submit(request, on_event)
    layer.forward = short_of_memory
    try:
        batcher.start()
        for on_event in events:
            on_event.wait()
    finally:
        del layer.forward
        batcher.close()
    for on_event in events[2:]:  # the two newest make room
        assert isinstance(on_event.final, Failed) and "out of memory" in on_event.final.message
    for request, on_event in zip(requests[:2], events[:2]):  # the others go on, undisturbed
        assert same(on_event.result, solo(reference, request))


# --------------------------------------------------------------------------------------------
# the real SmolLM2


@pytest.fixture(scope="module")
def smollm():
    from conftest import SHARED_CACHE

    from bedrock_local.engine.loading import load_causal_lm, materialize_foundation_model

    folder = materialize_foundation_model(find_foundation_model(SMOLLM_ID), SHARED_CACHE / "foundation-models")
    model, tokenizer = load_causal_lm(folder, dtype=torch.float32)
    batcher = ContinuousBatcher(model, tokenizer, device="cpu")
    batcher.start()
    yield batcher, TextGenerator(model, tokenizer, device="cpu")
    batcher.close(drain=False)


@pytest.mark.real_weights
def test_smollm2_greedy_equals_text_generator(smollm):
    batcher, reference = smollm
    requests = [chat("What is the capital of France? Answer in one sentence.", max_tokens=24),
                chat("Say hello in Japanese, in Japanese characters only.", max_tokens=24)]
    events = serve(batcher, requests)  # together in one batch
    for request, on_event in zip(requests, events):
        expected = solo(reference, request)
        assert same(on_event.result, expected), (on_event.result, expected)
        assert all("\ufffd" not in delta for delta in on_event.deltas)
    assert "Paris" in events[0].result.text and events[0].result.stop_reason == "end_turn"
    assert len(events[0].deltas) >= 3
    with pytest.raises(FormatError, match="empty once tokenized"):  # raised by submit, nothing queued
        batcher.submit(raw(""), pytest.fail)
    assert batcher.active == 0


@pytest.mark.real_weights
def test_smollm2_streaming_holds_back_half_characters_and_stop_starts(smollm):
    """Token by token through the batcher's own streaming, with text whose characters span tokens."""
    batcher, _ = smollm
    text = "Ciao, héllo 日本語 wörld! END of text"
    tokens = batcher.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [batcher.tokenizer.decode([t]) for t in tokens]
    assert any("\ufffd" in piece for piece in pieces)  # some characters really are split
    for stops, expected in [([], text), (["END"], "Ciao, héllo 日本語 wörld! "), (["日本語 x"], text)]:
        on_event = Events()
        request = TextRequest(messages=None, prompt="x", system=None, max_tokens=len(tokens) + 5, temperature=0.0,
                              top_p=1.0, stop_sequences=stops)
        live = _Live(_Row(0, [1], request, 0), on_event, 0.0, None)
        for token in tokens:
            if live.done:
                break
            batcher._take(live, token)
            streamed = "".join(on_event.deltas)
            assert "\ufffd" not in streamed and expected.startswith(streamed)
            assert not any(s in streamed for s in stops)
        if not live.done:
            batcher._finish_live(live, None)
        assert on_event.result.text == expected
        if stops == ["日本語 x"]:  # "日本語 " is held back until the stop cannot match any more
            assert any(d.startswith("日本語 w") for d in on_event.deltas)


def test_growing_cache_layer_writes_in_place_and_follows_replacements():
    from bedrock_local.engine.continuous import _GrowingLayer

    torch.manual_seed(0)
    layer, keys, values = _GrowingLayer(), [], []
    first_pointer = None
    for columns in (5, 1, 1, 1):
        k, v = torch.randn(2, 3, columns, 4), torch.randn(2, 3, columns, 4)
        keys.append(k), values.append(v)
        got_k, got_v = layer.update(k, v)
        assert torch.equal(got_k, torch.cat(keys, dim=-2)) and torch.equal(got_v, torch.cat(values, dim=-2))
        if columns == 1:  # decoding steps: the same buffer, no copy of what was there
            assert got_k.data_ptr() == first_pointer
        first_pointer = got_k.data_ptr()
    # what the batcher does between steps: drop a row, trim a column; the layer follows
    layer.replace(layer.keys[1:, :, 1:], layer.values[1:, :, 1:])
    k, v = torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4)
    got_k, got_v = layer.update(k, v)
    assert torch.equal(got_k, torch.cat([torch.cat(keys, dim=-2)[1:, :, 1:], k], dim=-2))
    assert torch.equal(got_v, torch.cat([torch.cat(values, dim=-2)[1:, :, 1:], v], dim=-2))
    assert layer.get_seq_length() == 8
