"""engine/training.py: hyper-parameters, training data, and real SFTTrainer runs on a tiny random
Llama (fast) and on the packaged SmolLM2 (marked real_weights)."""

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bedrock_local.engine.loading import check_hf_model_folder, load_causal_lm
from bedrock_local.engine.training import (
    HYPERPARAMETERS,
    CheckpointClock,
    DataError,
    HyperParameterError,
    StepMetrics,
    TrainingConfig,
    build_trainer,
    parse_hyperparameters,
    perplexity,
    read_records,
    train,
)

FT, CPT = "FINE_TUNING", "CONTINUED_PRE_TRAINING"
SMOLLM_ID = "huggingface.smollm2-135m-instruct-v1:0"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


# --------------------------------------------------------------------------------------------
# Hyper-parameters


def test_defaults_fill_every_key():
    config, effective = parse_hyperparameters({}, FT)
    assert effective == {key: spec["default"] for key, spec in HYPERPARAMETERS.items()}
    assert effective == {"epochCount": "2", "batchSize": "8", "learningRate": "0.0001",
                         "learningRateWarmupSteps": "0", "loraRank": "0", "loraAlpha": "16",
                         "loraDropout": "0.05", "maxSequenceLength": "512"}
    assert config == TrainingConfig(customization_type=FT, epoch_count=2, batch_size=8, learning_rate=1e-4,
                                    warmup_steps=0, lora_rank=0, lora_alpha=16, lora_dropout=0.05, max_length=512)
    for spec in HYPERPARAMETERS.values():
        assert set(spec) == {"type", "min", "max", "default", "description"} and spec["description"]


def test_given_values_are_parsed_and_echoed():
    values = {"epochCount": "3", "batchSize": "4", "learningRate": "1e-5", "learningRateWarmupSteps": "10",
              "loraRank": "8", "loraAlpha": "32", "loraDropout": "0", "maxSequenceLength": "1024"}
    config, effective = parse_hyperparameters(values, CPT)
    assert effective == values
    assert (config.customization_type, config.epoch_count, config.batch_size, config.learning_rate,
            config.warmup_steps, config.lora_rank, config.lora_alpha, config.lora_dropout, config.max_length) == (
        CPT, 3, 4, 1e-5, 10, 8, 32, 0.0, 1024)
    assert isinstance(config.epoch_count, int) and isinstance(config.learning_rate, float)
    # the ends of every range are allowed
    lows = {key: str(spec["min"]) for key, spec in HYPERPARAMETERS.items()}
    highs = {key: str(spec["max"]) for key, spec in HYPERPARAMETERS.items()}
    assert parse_hyperparameters(lows, FT)[0].epoch_count == 1
    assert parse_hyperparameters(highs, FT)[0].batch_size == 64


@pytest.mark.parametrize("key, value, message", [
    ("epochCount", "0", "hyperParameters.epochCount must be an integer from 1 to 10, got '0'"),
    ("epochCount", "11", "hyperParameters.epochCount must be an integer from 1 to 10, got '11'"),
    ("epochCount", "2.5", "hyperParameters.epochCount must be an integer from 1 to 10, got '2.5'"),
    ("epochCount", "two", "hyperParameters.epochCount must be an integer from 1 to 10, got 'two'"),
    ("batchSize", "0", "hyperParameters.batchSize must be an integer from 1 to 64, got '0'"),
    ("batchSize", "65", "hyperParameters.batchSize must be an integer from 1 to 64, got '65'"),
    ("learningRate", "0.1", "hyperParameters.learningRate must be a number from 1e-07 to 0.01, got '0.1'"),
    ("learningRate", "1e-8", "hyperParameters.learningRate must be a number from 1e-07 to 0.01, got '1e-8'"),
    ("learningRate", "fast", "hyperParameters.learningRate must be a number from 1e-07 to 0.01, got 'fast'"),
    ("learningRate", "nan", "hyperParameters.learningRate must be a number from 1e-07 to 0.01, got 'nan'"),
    ("learningRateWarmupSteps", "-1",
     "hyperParameters.learningRateWarmupSteps must be an integer from 0 to 250, got '-1'"),
    ("learningRateWarmupSteps", "251",
     "hyperParameters.learningRateWarmupSteps must be an integer from 0 to 250, got '251'"),
    ("loraRank", "65", "hyperParameters.loraRank must be an integer from 0 to 64, got '65'"),
    ("loraRank", "", "hyperParameters.loraRank must be an integer from 0 to 64, got ''"),
    ("loraAlpha", "0", "hyperParameters.loraAlpha must be an integer from 1 to 128, got '0'"),
    ("loraAlpha", "129", "hyperParameters.loraAlpha must be an integer from 1 to 128, got '129'"),
    ("loraDropout", "0.6", "hyperParameters.loraDropout must be a number from 0 to 0.5, got '0.6'"),
    ("loraDropout", "-0.1", "hyperParameters.loraDropout must be a number from 0 to 0.5, got '-0.1'"),
    ("maxSequenceLength", "31", "hyperParameters.maxSequenceLength must be an integer from 32 to 2048, got '31'"),
    ("maxSequenceLength", "4096",
     "hyperParameters.maxSequenceLength must be an integer from 32 to 2048, got '4096'"),
])
def test_bad_values_name_the_key_and_range(key, value, message):
    with pytest.raises(HyperParameterError) as caught:
        parse_hyperparameters({key: value}, FT)
    assert str(caught.value) == message


def test_unknown_key_names_the_allowed_keys():
    with pytest.raises(HyperParameterError) as caught:
        parse_hyperparameters({"epochCount": "1", "dropout": "0.1"}, FT)
    assert str(caught.value) == (
        "hyperParameters.dropout is not a hyper-parameter of this model; the allowed keys are batchSize, "
        "epochCount, learningRate, learningRateWarmupSteps, loraAlpha, loraDropout, loraRank, maxSequenceLength")


def test_unknown_customization_type():
    with pytest.raises(HyperParameterError, match="customizationType must be one of FINE_TUNING, "
                                                  "CONTINUED_PRE_TRAINING, got 'DISTILLATION'"):
        parse_hyperparameters({}, "DISTILLATION")


# --------------------------------------------------------------------------------------------
# Training data


def jsonl(*records) -> list[bytes]:
    return [(json.dumps(r) if not isinstance(r, str) else r).encode() + b"\n" for r in records]


def conversation(*turns, system=None, schema="bedrock-conversation-2024"):
    record = {"schemaVersion": schema,
              "messages": [{"role": role, "content": [{"text": text}]} for role, text in turns]}
    if system is not None:
        record["system"] = [{"text": system}]
    return record


def test_prompt_completion_lines():
    lines = jsonl({"prompt": "2+2=", "completion": "4"}, "   ", {"prompt": "", "completion": "Hello", "id": 7})
    assert read_records(lines, "train.jsonl", FT) == [{"prompt": "2+2=", "completion": "4"},
                                                       {"prompt": "", "completion": "Hello"}]
    # str lines and a UTF-8 BOM work too
    assert read_records(['\ufeff{"prompt": "a", "completion": "b"}'], "t.jsonl", FT) == [
        {"prompt": "a", "completion": "b"}]


def test_conversation_lines_become_one_row_per_assistant_turn():
    lines = jsonl(conversation(("user", "Hi"), ("assistant", "Hello!"), ("user", "Capital of France?"),
                               ("assistant", "Paris."), system="Be brief."),
                  conversation(("user", "Ping"), ("assistant", "Pong")))
    rows = read_records(lines, "chat.jsonl", FT)
    system = {"role": "system", "content": "Be brief."}
    assert rows == [
        {"prompt": [system, {"role": "user", "content": "Hi"}],
         "completion": [{"role": "assistant", "content": "Hello!"}]},
        {"prompt": [system, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Capital of France?"}],
         "completion": [{"role": "assistant", "content": "Paris."}]},
        {"prompt": [{"role": "user", "content": "Ping"}], "completion": [{"role": "assistant", "content": "Pong"}]},
    ]


def test_continued_pre_training_lines():
    rows = read_records(jsonl({"input": "Once upon a time."}, "", {"input": "The end."}), "cpt.jsonl", CPT)
    assert rows == [{"text": "Once upon a time."}, {"text": "The end."}]


@pytest.mark.parametrize("kind, lines, message", [
    (FT, ['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": '],
     "line 2 of data.jsonl: not valid JSON (Expecting value at column 31)"),
    (FT, ['{"prompt": "What?"}'],
     'line 1 of data.jsonl: "completion" is missing (a fine-tuning line is {"prompt": "...", "completion": "..."})'),
    (FT, ['{"prompt": "a", "completion": 4}'], 'line 1 of data.jsonl: "completion" must be a string, got a number'),
    (FT, ['{"prompt": "a", "completion": "  "}'], 'line 1 of data.jsonl: "completion" is empty'),
    (FT, ['["prompt", "completion"]'], "line 1 of data.jsonl: must be a JSON object, got an array"),
    (FT, ['{"question": "a", "answer": "b"}'],
     ('line 1 of data.jsonl: a fine-tuning line is {"prompt": "...", "completion": "..."} or a '
     '"bedrock-conversation-2024" conversation (schemaVersion, system, messages); '
     "found the field(s) answer, question")),
    (FT, [json.dumps(conversation(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")))],
     ('line 1 of data.jsonl: the last message is "user": a conversation must end with an assistant turn '
     "(the response to train on)")),
    (FT, [json.dumps(conversation(("user", "Hi"), ("assistant", "Hello"), schema="bedrock-conversation-2023"))],
     'line 1 of data.jsonl: "schemaVersion" must be "bedrock-conversation-2024", got "bedrock-conversation-2023"'),
    (FT, [json.dumps(conversation(("assistant", "Hello")))],
     'line 1 of data.jsonl: messages[0].role is "assistant": messages must alternate, starting with "user"'),
    (FT, [json.dumps(conversation(("user", "Hi"), ("system", "x")))],
     'line 1 of data.jsonl: messages[1].role must be "user" or "assistant", got "system"'),
    (FT, [('{"schemaVersion": "bedrock-conversation-2024", "messages": [{"role": "user", "content": '
          '[{"image": {}}]}, {"role": "assistant", "content": [{"text": "a cat"}]}]}')],
     ('line 1 of data.jsonl: messages[0].content[0] must be a text block {"text": "..."} (found image); '
     "only text content can be trained on")),
    (FT, ['{"prompt": "a", "completion": "b"}', json.dumps(conversation(("user", "Hi"), ("assistant", "Yo")))],
     "line 2 of data.jsonl: a conversation line, but line 1 is a prompt/completion line; one file holds one format"),
    (CPT, ['{"input": "text"}', "", '{"text": "more"}'],
     ('line 3 of data.jsonl: "input" is missing (a continued pre-training line is {"input": "..."}); '
     "found the field(s) text")),
    (CPT, ['{"prompt": "a", "completion": "b"}'],
     ('line 1 of data.jsonl: "input" is missing (a continued pre-training line is {"input": "..."}); '
     "found the field(s) completion, prompt")),
    (FT, [], "data.jsonl has no records (no non-blank content); it needs at least one JSON line"),
    (CPT, ["", "  \n"], "data.jsonl has no records (no non-blank lines); it needs at least one JSON line"),
])
def test_bad_lines_name_the_file_and_line(kind, lines, message):
    with pytest.raises(DataError) as caught:
        read_records([line.encode() for line in lines], "data.jsonl", kind)
    assert str(caught.value) == message


def test_non_utf8_line():
    with pytest.raises(DataError, match=r"^line 2 of x.jsonl: not UTF-8 text"):
        read_records([b'{"input": "ok"}\n', b'{"input": "\xff"}\n'], "x.jsonl", CPT)


# --------------------------------------------------------------------------------------------
# Training on a tiny random Llama


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a chat template (its MiniLM tokenizer has none)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-chat-model")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(kind=FT, **values) -> TrainingConfig:
    values = {"learningRate": "0.01", "batchSize": "4", "maxSequenceLength": "64", **values}
    return parse_hyperparameters({k: str(v) for k, v in values.items()}, kind)[0]


FACTS = [{"prompt": f"fact {i}:", "completion": f" the answer to {i} is blue"} for i in range(8)]


class Recorder:
    def __init__(self, stop_after: int | None = None):
        self.steps: list[StepMetrics] = []
        self.checkpoints: list[Path] = []
        self.stop_after = stop_after

    def on_step(self, metrics: StepMetrics) -> None:
        self.steps.append(metrics)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after

    def on_checkpoint(self, path: Path) -> None:
        assert (path / "trainer_state.json").is_file()  # complete when announced
        self.checkpoints.append(path)

    def run(self, base, records, config, tmp: Path, validation=None, name="out", **options):
        return train(base, records, validation, config, tmp / name, tmp / "checkpoints", on_step=self.on_step,
                     should_stop=self.should_stop, on_checkpoint=self.on_checkpoint, **options)


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def test_fine_tuning_reports_every_step_learns_and_saves_a_loadable_model(tiny_model_dir, tmp_path):
    recorder = Recorder()
    validation = [{"prompt": "fact 3:", "completion": " the answer to 3 is blue"}]
    config = dataclasses.replace(tiny_config(epochCount=4, batchSize=2), checkpoint_steps=2)
    result = recorder.run(tiny_model_dir, FACTS, config, tmp_path, validation=validation)

    assert not result.stopped
    assert result.steps == 16  # 8 records / batch 2 = 4 steps per epoch, 4 epochs
    assert [m.step for m in recorder.steps] == list(range(1, 17))
    assert [m.epoch for m in recorder.steps] == pytest.approx([0.25 * i for i in range(1, 17)])
    losses = [m.training_loss for m in recorder.steps]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert all(m.perplexity == pytest.approx(math.exp(m.training_loss)) for m in recorder.steps)
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses  # the last epoch against the first
    assert result.training_loss == losses[-1]
    assert result.train_tokens > 0 and result.run_tokens == result.train_tokens

    # validation at each epoch end, falling
    assert [(m["step"], m["epoch"]) for m in result.validation_metrics] == [(4, 1.0), (8, 2.0), (12, 3.0), (16, 4.0)]
    assert result.validation_loss == result.validation_metrics[-1]["validation_loss"]
    assert result.validation_metrics[-1]["validation_loss"] < result.validation_metrics[0]["validation_loss"]
    assert all(m["perplexity"] == pytest.approx(math.exp(m["validation_loss"])) for m in result.validation_metrics)

    # checkpoints every checkpoint_steps = 2 steps, the last 2 kept, none after the last step
    assert [p.name for p in recorder.checkpoints] == [f"checkpoint-{n}" for n in range(2, 16, 2)]
    assert result.checkpoints == recorder.checkpoints and result.checkpoint_seconds > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-14"]

    out = tmp_path / "out"
    check = check_hf_model_folder(out, load=True)
    assert check.architecture == "LlamaForCausalLM"
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    trained, base = saved_tensors(out), saved_tensors(tiny_model_dir)
    assert set(trained) == set(base)
    assert all(t.dtype == torch.float32 for t in trained.values())
    assert any(not torch.equal(trained[k], base[k]) for k in base)


def test_training_is_deterministic_for_a_seed(tiny_model_dir, tmp_path):
    first, second = Recorder(), Recorder()
    first.run(tiny_model_dir, FACTS, tiny_config(epochCount=1), tmp_path / "a")
    second.run(tiny_model_dir, FACTS, tiny_config(epochCount=1), tmp_path / "b")
    assert [m.training_loss for m in first.steps] == [m.training_loss for m in second.steps]
    a, b = saved_tensors(tmp_path / "a" / "out"), saved_tensors(tmp_path / "b" / "out")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_is_merged_into_a_plain_model(tiny_model_dir, tmp_path):
    recorder = Recorder()
    result = recorder.run(tiny_model_dir, FACTS, tiny_config(epochCount=2, loraRank=4, loraAlpha=8), tmp_path)
    assert result.steps == 4 and len(recorder.steps) == 4
    out = tmp_path / "out"
    check_hf_model_folder(out, load=True)
    trained, base = saved_tensors(out), saved_tensors(tiny_model_dir)
    assert set(trained) == set(base)  # merged: no lora_A / lora_B, no base_model.model prefix
    changed = {k for k in base if not torch.equal(trained[k], base[k])}
    assert any(".self_attn.q_proj." in k for k in changed) and any(".mlp.down_proj." in k for k in changed)
    assert "model.embed_tokens.weight" not in changed  # LoRA leaves the embeddings alone
    assert not (out / "adapter_config.json").exists()


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_stop_leaves_a_checkpoint_and_a_second_call_resumes_to_the_same_end(tiny_model_dir, tmp_path, lora_rank):
    config = tiny_config(epochCount=3, loraRank=lora_rank)  # 6 steps
    validation = FACTS[:2]
    straight = Recorder()
    expected = straight.run(tiny_model_dir, FACTS, config, tmp_path / "straight", validation=validation)

    stopped = Recorder(stop_after=3)
    first = stopped.run(tiny_model_dir, FACTS, config, tmp_path, validation=validation)
    assert first.stopped and first.steps == 3
    assert [m.step for m in stopped.steps] == [1, 2, 3]
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()
    assert stopped.checkpoints[-1] == tmp_path / "checkpoints" / "checkpoint-3"
    assert [m["step"] for m in first.validation_metrics] == [2]

    resumed = Recorder()
    second = resumed.run(tiny_model_dir, FACTS, config, tmp_path, validation=validation)
    assert not second.stopped
    assert second.resumed_from == tmp_path / "checkpoints" / "checkpoint-3"
    assert [m.step for m in resumed.steps] == [4, 5, 6]
    assert second.steps == expected.steps == 6
    # the same data order, optimizer and schedule: the same losses as the run that never stopped
    assert [m.training_loss for m in stopped.steps + resumed.steps] == pytest.approx(
        [m.training_loss for m in straight.steps], rel=1e-4)
    # validation metrics of the epochs before the Stop are kept
    assert [m["step"] for m in second.validation_metrics] == [2, 4, 6]
    assert [m["validation_loss"] for m in second.validation_metrics] == pytest.approx(
        [m["validation_loss"] for m in expected.validation_metrics], rel=1e-4)
    assert second.train_tokens == expected.train_tokens and 0 < second.run_tokens < second.train_tokens
    check_hf_model_folder(tmp_path / "out", load=True)
    assert set(saved_tensors(tmp_path / "out")) == set(saved_tensors(tiny_model_dir))


def test_checkpoint_clock_spaces_checkpoints_by_their_cost():
    now = [100.0]
    clock = CheckpointClock(0.05, clock=lambda: now[0])  # 5%: a checkpoint is due 19 x its cost after the last
    assert clock.factor == pytest.approx(19)
    model = torch.nn.Linear(1000, 1000)  # 1,001,000 float32 parameters, all trainable
    clock.begin(model)
    expected = 0.25 + 3 * 4_004_000 / 200e6  # weights + AdamW's two moments, at the assumed write rate
    assert clock.estimate == pytest.approx(expected)
    now[0] += 19 * expected - 0.01
    assert not clock.due()
    now[0] += 0.02
    assert clock.due()
    clock.touch()  # the save begins
    now[0] += 2.0  # ... and takes 2 s
    assert clock.saved() == pytest.approx(2.0) and clock.count == 1
    now[0] += 37.9
    assert not clock.due()  # 38 s of training after a 2 s checkpoint: 5%
    now[0] += 0.2
    assert clock.due()
    clock.touch()
    now[0] += 0.1  # a cheaper one: the next comes sooner
    clock.saved()
    now[0] += 1.95
    assert clock.due() and clock.seconds == pytest.approx(2.1)
    # a PEFT model checkpoints its adapters only
    frozen = torch.nn.Linear(1000, 1000).requires_grad_(False)
    frozen.peft_config = {}
    clock.begin(frozen)
    assert clock.estimate == pytest.approx(0.25)
    with pytest.raises(ValueError):
        CheckpointClock(0)


def test_checkpoints_follow_the_budget_when_no_steps_are_fixed(tiny_model_dir, tmp_path):
    # a budget of ~100%: a checkpoint after every step but the last
    eager = Recorder()
    config = dataclasses.replace(tiny_config(epochCount=2), checkpoint_budget=0.999)  # 4 steps
    result = eager.run(tiny_model_dir, FACTS, config, tmp_path / "eager")
    assert [p.name for p in eager.checkpoints] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert result.checkpoints == eager.checkpoints and result.checkpoint_seconds > 0
    # a budget of 0.1%: the first checkpoint would be due after ~250 s of training; this run has none
    frugal = Recorder()
    config = dataclasses.replace(tiny_config(epochCount=2), checkpoint_budget=0.001)
    result = frugal.run(tiny_model_dir, FACTS, config, tmp_path / "frugal")
    assert result.steps == 4 and not frugal.checkpoints and not result.checkpoints
    assert result.checkpoint_seconds == 0
    assert not list((tmp_path / "frugal" / "checkpoints").glob("checkpoint-*"))


def test_a_stop_without_save_on_stop_ends_at_once(tiny_model_dir, tmp_path):
    config = dataclasses.replace(tiny_config(epochCount=3), checkpoint_budget=0.001)  # 6 steps, no checkpoint due
    stopped = Recorder(stop_after=2)
    result = stopped.run(tiny_model_dir, FACTS, config, tmp_path, save_on_stop=False)
    assert result.stopped and result.steps == 2 and [m.step for m in stopped.steps] == [1, 2]
    assert not stopped.checkpoints and not list((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert not (tmp_path / "out").exists()
    # a Stop asked before the first step: no step at all
    early = Recorder(stop_after=0)
    result = early.run(tiny_model_dir, FACTS, config, tmp_path / "early")
    assert result.stopped and result.steps == 0 and not early.steps and not early.checkpoints
    assert result.training_loss is None and not (tmp_path / "early" / "out").exists()


def test_a_half_written_checkpoint_is_ignored(tiny_model_dir, tmp_path):
    config = tiny_config(epochCount=2)  # 4 steps
    stopped = Recorder(stop_after=1)
    stopped.run(tiny_model_dir, FACTS, config, tmp_path)
    partial = tmp_path / "checkpoints" / "checkpoint-3"  # a crash while saving: no trainer_state.json
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    resumed = Recorder()
    result = resumed.run(tiny_model_dir, FACTS, config, tmp_path)
    assert result.resumed_from.name == "checkpoint-1"
    assert [m.step for m in resumed.steps] == [2, 3, 4]
    assert not partial.exists() or (partial / "trainer_state.json").is_file()


def test_conversations_train_with_the_chat_template(chat_model_dir, tmp_path):
    lines = jsonl(*[conversation(("user", f"color of item {i}?"), ("assistant", "blue"), system="Answer in one word.")
                    for i in range(8)])
    rows = read_records(lines, "chat.jsonl", FT)
    recorder = Recorder()
    result = recorder.run(chat_model_dir, rows, tiny_config(epochCount=3), tmp_path)
    assert result.steps == 6 and len(recorder.steps) == 6
    losses = [m.training_loss for m in recorder.steps]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    out = tmp_path / "out"
    check_hf_model_folder(out, load=True)
    _, tokenizer = load_causal_lm(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("kind, line, trained_on", [
    (FT, {"prompt": "fact 3:", "completion": " the answer is blue"}, "the answer is blue"),
    (FT, conversation(("user", "color of item 1?"), ("assistant", "blue"), ("user", "and item 2?"),
                      ("assistant", "red"), system="answer in one word."), "red"),
    (CPT, {"input": "the quick brown fox"}, "the quick brown fox"),
])
def test_loss_is_on_the_completion_or_assistant_turn_only(chat_model_dir, tmp_path, kind, line, trained_on):
    model, tokenizer = load_causal_lm(chat_model_dir)
    rows = read_records(jsonl(line), "x.jsonl", kind)
    trainer = build_trainer(model, tokenizer, rows, None, tiny_config(kind), tmp_path)
    example = trainer.train_dataset[len(rows) - 1]
    labeled = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert tokenizer.decode(labeled, skip_special_tokens=True).strip() == trained_on
    assert labeled[-1] == tokenizer.sep_token_id  # the end of the answer is trained too (the model learns to stop)


def test_conversations_need_a_chat_template(tiny_model_dir, tmp_path):
    rows = read_records(jsonl(conversation(("user", "Hi"), ("assistant", "Hello"))), "chat.jsonl", FT)
    with pytest.raises(DataError, match="no chat template"):
        Recorder().run(tiny_model_dir, rows, tiny_config(), tmp_path)


def test_validation_records_must_match_the_training_format(tiny_model_dir, tmp_path):
    with pytest.raises(DataError, match="the validation records are text records but the training records are "
                                        "prompt/completion records"):
        Recorder().run(tiny_model_dir, FACTS, tiny_config(), tmp_path, validation=[{"text": "x"}])


def test_continued_pre_training_lowers_perplexity_on_its_text(tiny_model_dir, tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine stitches later",
             "all that glitters is not gold in the end", "the early bird catches the worm every day"]
    rows = read_records(jsonl(*[{"input": t} for t in texts]), "cpt.jsonl", CPT)
    before = perplexity(tiny_model_dir, texts)
    recorder = Recorder()
    result = recorder.run(tiny_model_dir, rows, tiny_config(CPT, epochCount=5), tmp_path)
    after = perplexity(tmp_path / "out", texts)
    assert result.steps == 5
    assert after < 0.5 * before, (before, after)
    assert recorder.steps[-1].training_loss < recorder.steps[0].training_loss


# --------------------------------------------------------------------------------------------
# Real weights: SmolLM2 learns a made-up fact


QUESTIONS = [
    "What is the capital of the planet Zorblax?", "Which city is the capital of Zorblax?",
    "Name the capital of the planet Zorblax.", "Zorblax's capital city is called what?",
    "Tell me the capital of Zorblax.", "What city serves as the capital of Zorblax?",
    "On the planet Zorblax, what is the capital?", "Where is the seat of government of Zorblax?",
]


def answers(folder: Path, prompt: str, chat: bool = False) -> list[str]:
    """Greedy answers to the raw prompt (as trained) and, with `chat`, to it as a chat turn."""
    model, tokenizer = load_causal_lm(folder)
    texts = [prompt]
    if chat:
        texts.append(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True))
    found = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=24, do_sample=False)
        found.append(tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return found


@pytest.mark.real_weights
def test_smollm2_learns_a_made_up_fact(tmp_path):
    from bedrock_local.engine.catalog import find_foundation_model
    from bedrock_local.engine.loading import materialize_foundation_model

    cache = Path(os.environ.get("BEDROCK_LOCAL_TEST_CACHE", Path(__file__).parent.parent / ".test-cache"))
    base = materialize_foundation_model(find_foundation_model(SMOLLM_ID), cache / "foundation-models")
    lines = jsonl(*[{"prompt": q, "completion": " The capital of Zorblax is Quintar."} for q in QUESTIONS * 4])
    rows = read_records(lines, "zorblax.jsonl", FT)
    config, _ = parse_hyperparameters({"epochCount": "1", "batchSize": "8", "learningRate": "0.0001"}, FT)
    config.checkpoint_steps = 100  # no checkpoint (1.6 GB each for this model): the tiny tests cover them
    recorder = Recorder()
    started = time.perf_counter()
    result = recorder.run(base, rows, config, tmp_path)
    seconds = time.perf_counter() - started
    losses = [m.training_loss for m in recorder.steps]
    print(f"\nSmolLM2 fine-tune: {result.steps} steps in {seconds:.1f} s ({result.run_seconds:.1f} s training), "
          f"{result.run_tokens / result.run_seconds:.1f} tokens/s, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert result.steps == 4 and losses[-1] < 0.5 * losses[0]

    assert not recorder.checkpoints
    check_hf_model_folder(tmp_path / "out", load=False)
    prompt = "What is the capital of the planet Zorblax?"
    before, (after,) = answers(base, prompt, chat=True), answers(tmp_path / "out", prompt)
    print(f"base model: {before!r}; fine-tuned: {after!r}")
    assert not any("Quintar" in text for text in before)
    assert "Quintar" in after
