"""20 optimizer steps of npcosteff's Trainer against torch.optim.AdamW + LambdaLR +
clip_grad_norm_ on the reference model: same initial weights, same batches, same dropout
masks, float64. The parameters must follow the same trajectory."""

import numpy as np
import pytest
import torch

from npcosteff.data.batching import EncodedSplit
from npcosteff.train import Trainer, TrainingArguments

from .helpers import make_pair, odd_config, torch_masks
from .reference import stage_loss as ref_stage_loss
from .reference import to_numpy


def _split(n, seed, vocab=97, max_length=12, num_labels=3):
    rng = np.random.default_rng(seed)
    ids = [np.concatenate([[1], rng.integers(4, vocab, int(rng.integers(1, max_length - 1))), [2]]).astype(np.int64)
           for _ in range(n)]
    tts = [np.zeros(len(x), np.int64) for x in ids]
    return EncodedSplit(ids, tts, rng.integers(0, num_labels, n), max_length)


def _torch_optimizer(ref, args, total_steps):
    # Four groups: weight decay or not (biases, LayerNorm) x encoder or exits (the exits learn
    # at learning_rate * exit_lr_multiplier).
    groups = []
    for exits in (False, True):
        lr = args.learning_rate * (args.exit_lr_multiplier if exits else 1.0)
        for decayed in (True, False):
            params = [p for n, p in ref.named_parameters() if n.startswith("exits.") == exits
                      and (not (n.endswith(".bias") or "LayerNorm" in n)) == decayed]
            groups.append({"params": params, "lr": lr, "weight_decay": args.weight_decay if decayed else 0.0})
    opt = torch.optim.AdamW(groups, lr=args.learning_rate)
    warmup = int(np.ceil(args.warmup_proportion * total_steps))

    def linear(step):   # transformers.get_linear_schedule_with_warmup
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, linear)


@pytest.mark.parametrize("stage, exit_lr_multiplier", [("hard", 1.0), ("pred_ta", 1.0), ("pred_ta", 4.0)])
def test_twenty_steps_follow_the_same_trajectory(device, stage, exit_lr_multiplier):
    # `hard`: plain fine-tuning of a one-exit model; `pred_ta`: the TA's multi-exit stage with
    # gradient equilibrium and a fixed teacher, also with the exits at 4x the encoder's rate.
    exit_start = 3 if stage == "hard" else 1
    model, ref = make_pair(odd_config(exit_start=exit_start), torch.float64, device, seed=21)
    teacher = t_ref = None
    if stage != "hard":
        teacher, t_ref = make_pair(odd_config(exit_start=3), torch.float64, device, seed=22)
    args = TrainingArguments(task="sst2", objective=stage, max_steps=20, batch_size=8, learning_rate=5e-3,
                             warmup_proportion=0.1, max_grad_norm=1.0, final_only=True, progress=False, seed=5,
                             exit_lr_multiplier=exit_lr_multiplier)
    trainer = Trainer(model, args, _split(48, seed=1), None, teacher=teacher)
    trainer.record_dropout = True
    opt, sched = _torch_optimizer(ref, args, trainer.total_steps)

    clipped = 0
    for step in range(20):
        epoch, k = divmod(step, trainer.steps_per_epoch)
        batch = list(trainer.batches_of_epoch(epoch))[k]
        stats = trainer.train_step(batch)

        masks = torch_masks(trainer.last_dropout.masks, ref)
        opt.zero_grad()
        r = ref(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], dropout_masks=masks,
                gradient_equilibrium=True)
        rt = None
        if t_ref is not None:
            with torch.no_grad():
                rt = t_ref(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = ref_stage_loss(stage, r, torch.as_tensor(batch["labels"]), torch.as_tensor(batch["attention_mask"]),
                              teacher_out=rt, final_only=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), args.max_grad_norm)
        clipped += float(norm) > args.max_grad_norm
        assert stats["loss"] == pytest.approx(float(loss.detach()), rel=1e-9), f"loss at step {step}"
        assert stats["grad_norm"] == pytest.approx(float(norm), rel=1e-9), f"gradient norm at step {step}"
        opt.step()
        sched.step()

    ref_params = dict(ref.named_parameters())
    for n in model.param_names:
        a, b = model.params[n], to_numpy(ref_params[n])
        # float64 over 20 Adam steps: rounding differences are amplified by 1/sqrt(v) of tiny
        # second moments, still far below the 1e-8 relative.
        assert np.abs(a - b).max() <= 1e-8 * np.abs(b).max(), n
    assert clipped > 0                     # the clipping branch was exercised
