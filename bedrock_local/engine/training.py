"""Fine-tuning and continued pre-training with TRL (SFTTrainer) and PEFT (LoRA).

`train` runs one SFTTrainer run with progress (`on_step`), Stop (`should_stop`), Trainer
checkpoints that a later call resumes from, validation at each epoch end, and the result saved as
a plain HF folder that loads like any imported model (full fine-tuning, or LoRA merged), or, for LoRA
with `adapter_base`, as the PEFT adapter folder alone (engine/adapters.py: served on its base). The hyper-parameters and the
training records it takes are parsed by engine/training_data.py (re-exported here), which loads no
ML library, so the API process can check a request without importing torch.

Loss masking is TRL's own: prompt/completion rows train on the completion only
(`completion_only_loss`); conversations become conversational prompt/completion rows (one per
assistant turn, the earlier turns as its prompt), so the loss is on the assistant turns only with
any chat template; continued pre-training rows are plain text with the LM loss on every token.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .loading import load_causal_lm
from .training_data import (CONTINUED_PRE_TRAINING, CONVERSATION_SCHEMA, CUSTOMIZATION_TYPES,  # noqa: F401
                            row_form,
                            FINE_TUNING, HYPERPARAMETERS, DataError, HyperParameterError, TrainingConfig,
                            parse_hyperparameters, read_records)

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR
CHECKPOINTS_KEPT = 2
# Before the first checkpoint of a run has been timed, its cost is guessed from the bytes it will hold
# (weights saved + AdamW's two moments) at this write rate, plus a fixed part (tokenizer, RNG and
# scheduler state, trainer_state.json). Measured on the 2-core CPU host: a full fine-tuning
# checkpoint of SmolLM2-135M (1.5 GiB) took 2.6 s to save, ~600 MB/s into the page cache; the
# guess is deliberately slower (a busy disk, an fsync), so a short run is not checkpointed early.
ASSUMED_SAVE_BYTES_PER_SECOND = 200e6
ASSUMED_SAVE_FIXED_SECONDS = 0.25

# --------------------------------------------------------------------------------------------
# Training


@dataclass
class StepMetrics:
    step: int  # optimizer steps done, counted over the whole run (resumed runs go on counting)
    epoch: float
    training_loss: float
    perplexity: float


@dataclass
class TrainingResult:
    stopped: bool  # should_stop() ended it (no model; a checkpoint of that step with save_on_stop)
    steps: int  # optimizer steps done in all (including those before a resume)
    training_loss: float | None  # loss of the last step
    validation_loss: float | None  # at the end, on the validation records (None without them)
    # one per epoch end: {"step", "epoch", "validation_loss", "perplexity"}
    validation_metrics: list[dict] = field(default_factory=list)
    train_tokens: int = 0  # non-padding tokens fed to the model in all (including before a resume)
    run_tokens: int = 0  # of those, the ones this call trained on (for throughput)
    run_seconds: float = 0.0  # wall time of this call's training loop
    resumed_from: Path | None = None  # the checkpoint this call resumed from
    checkpoints: list[Path] = field(default_factory=list)  # those this call saved, in order
    checkpoint_seconds: float = 0.0  # training time they took: Trainer saves + on_checkpoint calls


class _StoppedBeforeTraining(Exception):
    """should_stop() answered True before the first step: end without a step or a checkpoint."""


class CheckpointClock:
    """When to checkpoint so that checkpoints take at most `budget` of the training time.

    A checkpoint costs the Trainer's save plus the on_checkpoint call (the training waits for
    both); the next one is due once the time since the last one ended (or since training began) is
    at least (1 - budget) / budget times that cost: with the default 5%, 19 x. The cost is the last
    one measured; before any, a guess from the bytes the checkpoint will hold. So a short run may
    end with no checkpoint at all, and a crash loses at most ~19 x a checkpoint's cost of training."""

    def __init__(self, budget: float, clock: Callable[[], float] | None = None):
        if not 0 < budget < 1:
            raise ValueError(f"the checkpoint budget must be between 0 and 1, got {budget}")
        self.factor = (1 - budget) / budget
        self.clock = clock or time.monotonic
        self.cost: float | None = None  # of the last checkpoint, measured
        self.estimate = ASSUMED_SAVE_FIXED_SECONDS
        self.last_end = self.clock()
        self.mark = self.last_end  # the last moment the Trainer was ours before a save began
        self.count = 0
        self.seconds = 0.0

    def begin(self, model) -> None:
        """Training begins: estimate the first checkpoint's cost from `model`'s parameters."""
        saved, trainable, seen = 0, 0, set()
        for parameter in model.parameters() if model is not None else []:
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            size = parameter.numel() * parameter.element_size()
            trainable += size if parameter.requires_grad else 0
            saved += size
        if hasattr(model, "peft_config"):  # a PEFT checkpoint holds the adapters only
            saved = trainable
        self.estimate = ASSUMED_SAVE_FIXED_SECONDS + (saved + 2 * trainable) / ASSUMED_SAVE_BYTES_PER_SECOND
        self.last_end = self.mark = self.clock()

    def due(self) -> bool:
        cost = self.cost if self.cost is not None else self.estimate
        return self.clock() - self.last_end >= self.factor * cost

    def touch(self) -> None:
        self.mark = self.clock()

    def saved(self) -> float:
        """A checkpoint (save and on_checkpoint) just ended: answers its cost."""
        now = self.clock()
        self.cost = now - self.mark
        self.count += 1
        self.seconds += self.cost
        self.last_end = self.mark = now
        return self.cost


def _perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def _complete_checkpoints(folder: Path) -> list[Path]:
    """Trainer checkpoints in `folder`, oldest first, that were completely written
    (trainer_state.json is the last file a Trainer writes into one)."""
    found = []
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if not match or not path.is_dir():
            continue
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _latest_checkpoint(folder: Path) -> Path | None:
    """The latest complete checkpoint; half-written ones (a crash during a save) are removed."""
    complete = _complete_checkpoints(folder)
    latest = complete[-1] if complete else None
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(CHECKPOINT_PREFIX) and path.is_dir() and path not in complete:
                shutil.rmtree(path, ignore_errors=True)
    return latest


def _device() -> tuple[bool, bool]:
    """(use CUDA, use bf16 mixed precision)."""
    cuda = torch.cuda.is_available()
    return cuda, cuda and torch.cuda.is_bf16_supported()


def _callbacks(on_step, should_stop, on_checkpoint, checkpoint_dir: Path, flags: dict, clock: CheckpointClock,
               spaced: bool, save_on_stop: bool):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            clock.begin(model)
            if should_stop():  # asked during the load and build: no step, no checkpoint
                raise _StoppedBeforeTraining()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                # The last step: the model itself is saved next; a checkpoint would only cost time and disk.
                control.should_save = False
            elif spaced:
                control.should_save = clock.due()
            clock.touch()

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Called after on_step_end and before the Trainer evaluates and saves, so a Stop asked for
            # here can still get (or skip) this step's checkpoint.
            if not logs or "loss" not in logs or state.global_step <= flags["last_reported"]:
                clock.touch()
                return
            flags["last_reported"] = state.global_step
            loss = float(logs["loss"])
            on_step(StepMetrics(step=state.global_step, epoch=float(state.epoch or 0.0), training_loss=loss,
                                perplexity=_perplexity(loss)))
            if should_stop():
                flags["stopped"] = True
                control.should_training_stop = True
                # save_on_stop: the next call resumes from here; without it, the Stop ends at once
                control.should_save = save_on_stop
            clock.touch()

        def on_evaluate(self, args, state, control, **kwargs):
            clock.touch()

        def on_epoch_end(self, args, state, control, **kwargs):
            if flags["stopped"]:  # the Trainer ends the epoch when it stops: no validation for a Stop
                control.should_evaluate = False

        def on_save(self, args, state, control, **kwargs):
            path = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if path.is_dir():
                flags["checkpoints"].append(path)
                if on_checkpoint is not None:
                    on_checkpoint(path)
            cost = clock.saved()
            log.info("%s%s took %.2f s of training (save + on_checkpoint)%s", CHECKPOINT_PREFIX, state.global_step,
                     cost, f"; the next is due after {clock.factor * cost:.1f} s more" if spaced else "")

    return [Progress()]


def _validation_metrics(log_history: list[dict]) -> list[dict]:
    metrics: dict[int, dict] = {}
    for entry in log_history:
        if "eval_loss" in entry:
            loss = float(entry["eval_loss"])
            metrics[int(entry["step"])] = {"step": int(entry["step"]), "epoch": float(entry.get("epoch", 0.0)),
                                           "validation_loss": loss, "perplexity": _perplexity(loss)}
    return [metrics[step] for step in sorted(metrics)]


def _last_training_loss(log_history: list[dict]) -> float | None:
    for entry in reversed(log_history):
        if "loss" in entry:
            return float(entry["loss"])
    return None


def _checkpointing_field() -> str:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing (the old name warns)."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _lora_config(config: TrainingConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",  # every attention and MLP projection (never the output layer)
        bias="none",
        task_type="CAUSAL_LM",
    )


def _record_form(train_records: list[dict], validation_records: list[dict] | None, customization_type: str) -> str:
    """The one row form of the records ("prompt/completion", "conversation" or "text")."""
    if not train_records:
        raise DataError("there are no training records")
    forms = {row_form(row) for row in train_records}
    validation_forms = {row_form(row) for row in validation_records or []}
    if len(forms) > 1:
        raise DataError(f"the training records mix formats ({', '.join(sorted(forms))}); use one format")
    if validation_forms and validation_forms != forms:
        raise DataError(
            f"the validation records are {', '.join(sorted(validation_forms))} records but the training "
            f"records are {', '.join(sorted(forms))} records; use the same format for both"
        )
    form = forms.pop()
    if customization_type == CONTINUED_PRE_TRAINING and form != "text":
        raise DataError('continued pre-training takes {"input"} records')
    if customization_type == FINE_TUNING and form == "text":
        raise DataError("fine-tuning takes prompt/completion or conversation records")
    return form


def build_trainer(model, tokenizer, train_records: list[dict], validation_records: list[dict] | None,
                  config: TrainingConfig, checkpoint_dir: Path, callbacks: list | None = None):
    """The SFTTrainer that `train` runs (exposed for tests and benchmarks): `model` and `tokenizer`
    as load_causal_lm answers them, rows from read_records. Prompt/completion rows (conversations
    included) train on the completion only, text rows on every token."""
    import datasets
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bar()
    hf_logging.disable_progress_bar()
    form = _record_form(train_records, validation_records, config.customization_type)
    if form == "conversation" and not getattr(tokenizer, "chat_template", None):
        raise DataError("the base model's tokenizer has no chat template, so it cannot be trained on "
                        "conversations; use prompt/completion lines")
    eos_token = None
    if tokenizer.eos_token is None:  # e.g. BERT-style tokenizers: end records with their separator
        eos_token = tokenizer.sep_token
        if eos_token is None:
            raise ValueError("the tokenizer has no end-of-sequence token")

    use_cuda, bf16 = _device()
    validate = bool(validation_records)
    args = SFTConfig(
        output_dir=str(checkpoint_dir),
        num_train_epochs=config.epoch_count,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="linear",
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        logging_strategy="steps",
        logging_steps=1,
        # Fixed steps when config.checkpoint_steps says so; otherwise train()'s CheckpointClock decides.
        save_strategy="steps" if config.checkpoint_steps else "no",
        save_steps=config.checkpoint_steps or 500,
        save_total_limit=CHECKPOINTS_KEPT,
        eval_strategy="epoch" if validate else "no",
        prediction_loss_only=True,
        bf16=bf16,  # mixed precision on CUDA; the weights stay float32
        fp16=False,
        use_cpu=not use_cuda,
        **{_checkpointing_field(): config.gradient_checkpointing},
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=use_cuda,
        eos_token=eos_token,
        completion_only_loss=None,  # TRL: on for prompt/completion rows, off for text rows
        packing=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_records),
        eval_dataset=datasets.Dataset.from_list(validation_records) if validate else None,
        processing_class=tokenizer,
        peft_config=_lora_config(config) if config.lora_rank > 0 else None,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to on_step, not stdout
    return trainer


def train(
    base_model: Path,
    train_records: list[dict],
    validation_records: list[dict] | None,
    config: TrainingConfig,
    output_dir: Path,
    checkpoint_dir: Path,
    *,
    on_step: Callable[[StepMetrics], None],
    should_stop: Callable[[], bool],
    on_checkpoint: Callable[[Path], None] | None = None,
    save_on_stop: bool = True,
    adapter_base: str | None = None,
) -> TrainingResult:
    """Train `base_model` (an HF folder) on `train_records` (rows from read_records) with TRL's
    SFTTrainer; full fine-tuning, or LoRA (PEFT) when config.lora_rank > 0. Float32 weights; bf16
    mixed precision on CUDA when the GPU has it.

    Trainer checkpoints go to `checkpoint_dir`, the last 2 kept, none after the last step, and
    `on_checkpoint(path)` is called after each (the training waits for it): every
    config.checkpoint_steps steps when it is set, otherwise spaced by their measured cost so that
    they take at most config.checkpoint_budget of the training time (CheckpointClock; a short run
    may have none). When `checkpoint_dir` already holds a complete checkpoint, training resumes from
    the latest one and ends at the same total step count as an uninterrupted run. `on_step` gets
    every optimizer step's loss; `should_stop` is asked right after it (and once before the first
    step), and when it answers True, TrainingResult(stopped=True) comes back without a model, after
    saving that step's checkpoint when `save_on_stop` (a later call resumes from it).
    Otherwise the model (eval mode, KV cache on) is saved with its tokenizer and chat template
    into `output_dir`, as float32 safetensors: with LoRA and `adapter_base` (the name of the base,
    e.g. its foundation model id, written as the adapter_config.json's base_model_name_or_path
    instead of this host's path), the adapter folder alone; with LoRA and no `adapter_base`, the
    adapter merged into the base, a whole model."""
    base_model, output_dir, checkpoint_dir = Path(base_model), Path(output_dir), Path(checkpoint_dir)
    _record_form(train_records, validation_records, config.customization_type)  # before the slow load

    # A previous call's Stop or crash left a checkpoint: resume from it.
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume = _latest_checkpoint(checkpoint_dir)
    flags = {"stopped": False, "last_reported": 0, "checkpoints": []}
    tokens_before = 0
    if resume is not None:
        state = json.loads((resume / "trainer_state.json").read_text(encoding="utf-8"))
        flags["last_reported"] = int(state.get("global_step", 0))
        tokens_before = int(state.get("num_input_tokens_seen", 0) or 0)

    model, tokenizer = load_causal_lm(base_model, dtype=torch.float32, device="cpu")
    clock = CheckpointClock(config.checkpoint_budget)
    callbacks = _callbacks(on_step, should_stop, on_checkpoint, checkpoint_dir, flags, clock,
                           spaced=not config.checkpoint_steps, save_on_stop=save_on_stop)
    trainer = build_trainer(model, tokenizer, train_records, validation_records, config, checkpoint_dir,
                            callbacks=callbacks)
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    except _StoppedBeforeTraining:
        return TrainingResult(stopped=True, steps=flags["last_reported"], training_loss=None, validation_loss=None,
                              train_tokens=tokens_before, resumed_from=resume)
    seconds = time.perf_counter() - started

    history = trainer.state.log_history  # restored from the checkpoint on resume: the whole run
    validation_metrics = _validation_metrics(history)
    total_tokens = int(trainer.state.num_input_tokens_seen or 0)
    result = TrainingResult(
        stopped=flags["stopped"],
        steps=int(trainer.state.global_step),
        training_loss=_last_training_loss(history),
        validation_loss=validation_metrics[-1]["validation_loss"] if validation_metrics else None,
        validation_metrics=validation_metrics,
        train_tokens=total_tokens,
        run_tokens=total_tokens - tokens_before,
        run_seconds=seconds,
        resumed_from=resume,
        checkpoints=list(flags["checkpoints"]),
        checkpoint_seconds=clock.seconds,
    )
    trained = trainer.model
    del trainer, model
    if result.stopped:
        return result
    if config.lora_rank > 0 and adapter_base:
        _save_adapter(trained, tokenizer, output_dir, adapter_base)
        return result
    if config.lora_rank > 0:
        trained = trained.merge_and_unload()
    _save_model(trained, tokenizer, output_dir)
    return result


def _save_adapter(model, tokenizer, output_dir: Path, base: str) -> None:
    """The PEFT adapter (adapter_config.json + adapter_model.safetensors, float32 as it trained: see
    _save_model) and the tokenizer, with `base` named as its base model."""
    model.peft_config["default"].base_model_name_or_path = base
    output_dir.mkdir(parents=True, exist_ok=True)
    model.to(device="cpu", dtype=torch.float32).save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    # PEFT writes a README.md model card that names the base; it is not part of the model
    (output_dir / "README.md").unlink(missing_ok=True)


def _save_model(model, tokenizer, output_dir: Path) -> None:
    """Save in float32, the dtype it trained in: a fine-tune's weight updates are smaller than
    bfloat16's resolution (measured: SmolLM2 fine-tuned on a made-up fact answers it from float32
    weights and forgets it once the same weights are rounded to bfloat16)."""
    for flag, disable in (("is_activation_checkpointing", "activation_checkpointing_disable"),
                          ("is_gradient_checkpointing", "gradient_checkpointing_disable")):
        if hasattr(model, flag):
            if getattr(model, flag):
                getattr(model, disable)()
            break
    model.eval()  # NOTES: generating in train mode (dropout, checkpointing) gives garbage
    model.config.use_cache = True
    output_dir.mkdir(parents=True, exist_ok=True)
    model.to(device="cpu", dtype=torch.float32).save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)


# --------------------------------------------------------------------------------------------
# Metrics


def perplexity(model_dir: Path, texts: list[str], max_length: int = 512) -> float:
    """exp(mean token negative log-likelihood) of the model saved in `model_dir` over `texts`
    (every token after the first of each text, the tokenizer's special tokens included)."""
    model, tokenizer = load_causal_lm(Path(model_dir), dtype=torch.float32)
    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
            if ids.shape[1] < 2:
                continue
            loss = model(input_ids=ids, labels=ids).loss
            count = ids.shape[1] - 1
            total_nll += float(loss) * count
            total_tokens += count
    if not total_tokens:
        raise ValueError("the texts hold no token to predict")
    return _perplexity(total_nll / total_tokens)
