"""Training: one step of any COST-EFF objective, per-exit evaluation, and a resumable loop.

A step is: forward with dropout -> `objective_loss` (objectives.py) -> `model.backward` ->
gradient clipping -> AdamW with a linear warmup/decay schedule. The loop evaluates every exit
on `eval_data` every N steps, keeps the checkpoint with the best metric averaged over exits,
writes a metrics file, and can resume after an interruption from its last checkpoint.
`eval_data` is what checkpoints are chosen on: the stages (npcosteff.stages) give the held-out part of the
training set (`npcosteff.data.heldout_split`), never the dev set it reports.

Run folder layout::

    <output_dir>/best/        config.json, model.safetensors, tokenizer.json (best eval_data score)
    <output_dir>/last/        the same plus optimizer.safetensors and trainer_state.json (resume)
    <output_dir>/metrics.jsonl   one JSON line per logged training window and per evaluation
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import allocator
from . import weights as W
from .data.batching import iterate_batches
from .objectives import TRAINING_OBJECTIVES, objective_loss, teacher_outputs
from .metrics import compute_metrics, main_metric, predictions_from_logits
from .model import CostEffModel
from .nn.dropout import Dropout
from .optim import AdamW, LinearSchedule, clip_grad_norm



@dataclass
class TrainingArguments:
    """Hyperparameters of one training run of an objective (defaults: docs/method.md, 6, fine-tuning)."""
    task: str
    objective: str = "hard"              # hard | hidden | pred | pred_ta (npcosteff.objectives)
    epochs: float = 3.0
    max_steps: Optional[int] = None      # overrides epochs when set
    batch_size: int = 32
    group_by_length: bool = False        # batches of similar lengths (less padding; data.batching.grouped_order)
    eval_batch_size: int = 64
    learning_rate: float = 2e-5
    exit_lr_multiplier: float = 1.0      # the exits' parameters (exits.*) learn at learning_rate times this
    weight_decay: float = 0.01
    warmup_proportion: float = 0.1
    warmup_steps: Optional[int] = None   # overrides warmup_proportion when set
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    final_only: bool = True              # hard objective: the last exit only (plain fine-tuning)
    gradient_equilibrium: str = "authors"     # authors | exit_layers | off (npcosteff.equilibrium)
    use_attention: bool = False          # attention-map distillation in the hidden and pred objectives
    regression_distill: str = "all"      # regression: distill every exit (all) or the last (final, the authors')
    eval_every: Optional[int] = None     # steps; None = once per epoch
    log_every: int = 20
    seed: int = 42
    save_best: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.objective not in TRAINING_OBJECTIVES:
            raise ValueError(f"unknown training objective {self.objective!r}; choose one of {TRAINING_OBJECTIVES}")
        for name in ("batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not (math.isfinite(self.exit_lr_multiplier) and self.exit_lr_multiplier > 0):
            raise ValueError(f"exit_lr_multiplier must be a number > 0, got {self.exit_lr_multiplier}")


def training_arguments(task: str, training, progress: bool = True, **run) -> TrainingArguments:
    """The trainer's arguments for one run of a stage: every field of the recipe's shared
    ``training`` section (npcosteff.recipe.Training), then this run's own settings (`run`:
    objective, epochs, learning_rate, batch_size, ...)."""
    shared = {f.name: getattr(training, f.name) for f in dataclasses.fields(training)}
    return TrainingArguments(task=task, progress=progress, **{**shared, **run})


def exit_lr_scale(multiplier: float):
    """The optimizer's per-parameter learning-rate factor: `multiplier` for the exits' parameters
    (names under ``exits.``), 1 for the encoder; None when the multiplier is 1."""
    if multiplier == 1.0:
        return None
    return lambda name: multiplier if name.startswith("exits.") else 1.0


def loss_and_backward(model, batch, objective, teacher=None, *, dropout=None, training=True, temperature=1.0,
                      final_only=False, use_attention=False, gradient_equilibrium="authors", last_exit_only=False,
                      regression_distill="all"):
    """Forward, `objective_loss` and backward on one batch; gradients are added into model.grads.

    Returns the ObjectiveLoss (value and components)."""
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], training=training,
                dropout=dropout, output_attentions=use_attention, return_cache=True,
                gradient_equilibrium=gradient_equilibrium if training else "off")
    t_out = teacher_outputs(teacher, batch, use_attention) if objective != "hard" else None
    loss = objective_loss(objective, out, batch.get("labels"), batch["attention_mask"], teacher=t_out,
                      temperature=temperature, final_only=final_only, use_attention=use_attention,
                      regression=model.config.is_regression, last_exit_only=last_exit_only,
                      regression_distill=regression_distill)
    model.backward(out.cache, loss.grad_hidden_states, loss.grad_logits, loss.grad_attentions)
    return loss


def evaluate(model: CostEffModel, encoded, task, batch_size=64) -> dict:
    """The metrics of every exit on `encoded` in one pass, and their average of the task's main metric.

    Returns ``{"exits": {layer: metrics}, "average": float, "final": float, "main_metric": name}``."""
    logits = [[] for _ in model.config.exit_layers]
    order = []
    for batch in iterate_batches(encoded, encoded.labels, batch_size, sort_by_length=True):
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        for k, z in enumerate(out.logits):
            logits[k].append(z)
        order.append(batch["indices"])
    order = np.concatenate(order)
    key = main_metric(task)
    exits = {}
    for k, layer_index in enumerate(model.config.exit_layers):
        sorted_preds = predictions_from_logits(np.concatenate(logits[k]), model.config.is_regression)
        preds = np.empty_like(sorted_preds)
        preds[order] = sorted_preds                    # back to the split's order
        exits[layer_index + 1] = compute_metrics(task, preds, encoded.labels)
    scores = [m[key] for m in exits.values()]
    return {"exits": exits, "average": float(np.mean(scores)), "final": float(scores[-1]), "main_metric": key}


class Trainer:
    """Trains `model` on one objective; `teacher` is needed by the distillation objectives."""

    def __init__(self, model: CostEffModel, args: TrainingArguments, train_data, eval_data=None,
                 teacher: Optional[CostEffModel] = None, output_dir=None, tokenizer_file=None):
        if args.objective != "hard" and teacher is None:
            raise ValueError(f"objective {args.objective!r} distills from a teacher; pass teacher=")
        if model.config.num_labels == 0:
            raise ValueError("the model has no exits (num_labels == 0): give num_labels when loading it")
        if len(train_data) == 0:
            raise ValueError("the training split is empty")
        self.model, self.args, self.teacher = model, args, teacher
        self.train_data, self.eval_data = train_data, eval_data
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.tokenizer_file = tokenizer_file
        self.steps_per_epoch = math.ceil(len(train_data) / args.batch_size)
        self.total_steps = args.max_steps or math.ceil(args.epochs * self.steps_per_epoch)
        self.optimizer = AdamW(model.params, args.learning_rate, weight_decay=args.weight_decay,
                               names=model.param_names, lr_scale=exit_lr_scale(args.exit_lr_multiplier))
        if args.warmup_steps is None:
            self.schedule = LinearSchedule.from_ratio(args.learning_rate, self.total_steps, args.warmup_proportion)
        else:
            self.schedule = LinearSchedule(args.learning_rate, min(args.warmup_steps, self.total_steps),
                                           self.total_steps)
        self.step = 0
        self.best = -math.inf
        self.history = []
        self.record_dropout = False          # keep each step's dropout masks (parity tests replay them)
        self.last_dropout = None

    # ------------------------------------------------------------------ pieces
    def batches_of_epoch(self, epoch):
        """The shuffled batches of an epoch; the order depends on (seed, epoch) alone, so a
        resumed run sees the same batches."""
        rng = np.random.default_rng([self.args.seed, epoch])
        return iterate_batches(self.train_data, self.train_data.labels, self.args.batch_size, shuffle=True, rng=rng,
                               group_by_length=self.args.group_by_length)

    def train_step(self, batch) -> dict:
        """One optimizer step on a batch; returns the loss and its components."""
        a, m = self.args, self.model
        m.zero_grad()
        # The masks depend on (seed, step) alone, so a resumed run draws the same ones.
        dropout = Dropout(np.random.default_rng([a.seed, 1_000_003, self.step]), m.config.hidden_dropout_prob,
                          m.config.attention_probs_dropout_prob, record=self.record_dropout)
        self.last_dropout = dropout if self.record_dropout else None
        loss = loss_and_backward(m, batch, a.objective, self.teacher, dropout=dropout, temperature=a.temperature,
                                 final_only=a.final_only, use_attention=a.use_attention,
                                 gradient_equilibrium=a.gradient_equilibrium,
                                 regression_distill=a.regression_distill)
        norm = clip_grad_norm(m.grads, a.max_grad_norm, names=m.param_names)
        lr = self.schedule.lr_at(self.step)
        self.optimizer.step(m.grads, lr=lr)
        self.step += 1
        return {"loss": loss.value, **{k: float(v) for k, v in loss.components.items()}, "grad_norm": norm, "lr": lr}

    def evaluate(self) -> Optional[dict]:
        if self.eval_data is None:
            return None
        return evaluate(self.model, self.eval_data, self.args.task, self.args.eval_batch_size)

    # ------------------------------------------------------------------ loop
    def train(self, resume=True) -> dict:
        """Run to `total_steps`; returns the last evaluation and the best averaged score."""
        from .progress import progress_bar as tqdm

        allocator.keep_freed_memory()     # each step's arrays reuse the last step's pages (allocator.py)
        a = self.args
        if resume and self.output_dir and os.path.isfile(os.path.join(self.output_dir, "last", "trainer_state.json")):
            self.load_checkpoint(os.path.join(self.output_dir, "last"))
        eval_every = a.eval_every or self.steps_per_epoch
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{a.task} {a.objective}", disable=not a.progress)
        window, t0, last_eval = [], time.perf_counter(), None
        while self.step < self.total_steps:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            for k, batch in enumerate(self.batches_of_epoch(epoch)):
                if k < skip:
                    continue                                   # resumed mid-epoch: these are done
                stats = self.train_step(batch)
                window.append(stats)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
                if self.step % a.log_every == 0 or self.step == self.total_steps:
                    self._log({"type": "train", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                               **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
                               "seconds": time.perf_counter() - t0})
                    window = []
                if self.step % eval_every == 0 or self.step == self.total_steps:
                    last_eval = self._evaluate_and_checkpoint()
                if self.step >= self.total_steps:
                    break
        bar.close()
        return {"last": last_eval, "best_average": self.best, "steps": self.step}

    def _evaluate_and_checkpoint(self):
        result = self.evaluate()
        if result is not None:
            self._log({"type": "eval", "step": self.step, "average": result["average"], "final": result["final"],
                       "exits": {str(k): v for k, v in result["exits"].items()}})
            if result["average"] > self.best:
                self.best = result["average"]
                if self.output_dir and self.args.save_best:
                    self.model.save_pretrained(os.path.join(self.output_dir, "best"), self.tokenizer_file)
        if self.output_dir:
            self.save_checkpoint(os.path.join(self.output_dir, "last"))
        return result

    def _log(self, record):
        self.history.append(record)
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ resume
    def save_checkpoint(self, folder):
        """Weights, optimizer moments and loop state, written as one atomic folder."""
        m, opt = self.model, self.optimizer.state_dict()
        state = {"step": self.step, "best": self.best, "args": dataclasses.asdict(self.args),
                 "optimizer_step": opt["step"], "optimizer_num_steps": opt["num_steps"]}
        moments = {f"exp_avg.{n}": opt["exp_avg"][n] for n in m.param_names}
        moments.update({f"exp_avg_sq.{n}": opt["exp_avg_sq"][n] for n in m.param_names})
        m.save_pretrained(folder, self.tokenizer_file or None, extra_files={
            "optimizer.safetensors": lambda p: W.write_safetensors(p, moments),
            "trainer_state.json": lambda p: W.write_text(p, json.dumps(state, indent=2)),
        })

    def load_checkpoint(self, folder):
        """Restore weights, optimizer and loop state saved by `save_checkpoint`."""
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
            state = json.load(f)
        m = self.model
        params = W.read_safetensors(os.path.join(folder, "model.safetensors"))
        W.check_state(params, {n: p.shape for n, p in m.params.items()})
        for n in m.param_names:
            m.params[n][...] = params[n]
        moments = W.read_safetensors(os.path.join(folder, "optimizer.safetensors"))
        self.optimizer.load_state_dict({
            "num_steps": state["optimizer_num_steps"], "step": state["optimizer_step"],
            "exp_avg": {n: moments[f"exp_avg.{n}"] for n in m.param_names},
            "exp_avg_sq": {n: moments[f"exp_avg_sq.{n}"] for n in m.param_names}})
        self.step, self.best = int(state["step"]), float(state["best"])
