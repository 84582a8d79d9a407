"""Fine-tune the packaged MiniLM on a GLUE task with npcosteff and with the PyTorch reference,
same hyperparameters, seed, initial weights, batches and dropout masks; report both dev
metrics and wall-clock times.

    python experiments/finetune_vs_torch.py --task mrpc --glue-dir path/to/glue --epochs 3
    python experiments/finetune_vs_torch.py --task sst2 --glue-dir path/to/glue \\
        --max-train 8000 --epochs 1 --max-length 64

Both sides start from the same numbers: the classifier is initialized once by npcosteff and
copied into torch; the batches come from `Trainer.batches_of_epoch`; the dropout masks are
drawn by `npcosteff.nn.dropout.Dropout` from the same (seed, step) generator on both sides.
The torch side is `parity_tests/reference.py` (plain torch modules, autograd,
`torch.optim.AdamW`, `LambdaLR`, `clip_grad_norm_`), run on CUDA when present, else the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import npcosteff  # noqa: E402, F401  (first: its thread settings, npcosteff/threads.py, precede Numba's first parallel loop)
import numpy as np  # noqa: E402

from npcosteff.data.batching import iterate_batches  # noqa: E402
from npcosteff.metrics import compute_metrics, main_metric, predictions_from_logits  # noqa: E402
from npcosteff.nn.dropout import Dropout  # noqa: E402
from npcosteff.data import load_task_data  # noqa: E402
from npcosteff.train import Trainer, TrainingArguments  # noqa: E402


def torch_side(model_np, data, args, trainer_np_like):
    """Fine-tune the torch reference from model_np's initial weights; returns (metrics, seconds)."""
    import torch

    from parity_tests.reference import RefCostEffBert, pick_device, objective_loss

    torch.manual_seed(args.seed)
    device = pick_device()
    dtype = torch.float32
    ref = RefCostEffBert(model_np.config.to_dict(), model_np.state_dict(), dtype=dtype, device=device)
    decay = [p for n, p in ref.named_parameters() if not (n.endswith(".bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in ref.named_parameters() if n.endswith(".bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.learning_rate)
    total = trainer_np_like.total_steps
    sched_np = trainer_np_like.schedule
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: sched_np.factor(k))
    c = model_np.config
    t0 = time.perf_counter()
    step = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="torch reference")
    while step < total:
        epoch = step // trainer_np_like.steps_per_epoch
        for batch in trainer_np_like.batches_of_epoch(epoch):
            B, T = batch["input_ids"].shape
            # The same generator and the same call order as npcosteff's forward pass.
            drop = Dropout(np.random.default_rng([args.seed, 1_000_003, step]), c.hidden_dropout_prob,
                           c.attention_probs_dropout_prob)
            masks = {"embeddings": drop.mask("embeddings", (B, T, c.hidden_size), np.float32)}
            for i in range(c.num_hidden_layers):
                masks[f"layer.{i}.attention.probs"] = drop.mask(f"layer.{i}.attention.probs",
                                                                (B, c.heads_per_layer[i], T, T), np.float32)
                masks[f"layer.{i}.attention.output"] = drop.mask(f"layer.{i}.attention.output",
                                                                 (B, T, c.hidden_size), np.float32)
                masks[f"layer.{i}.output"] = drop.mask(f"layer.{i}.output", (B, T, c.hidden_size), np.float32)
                if i in c.exit_layers:
                    masks[f"exit.{i}"] = drop.mask(f"exit.{i}", (B, c.hidden_size), np.float32)
            opt.zero_grad()
            out = ref(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                      dropout_masks={k: torch.as_tensor(v) for k, v in masks.items()})
            loss = objective_loss("hard", out, torch.as_tensor(batch["labels"]), torch.as_tensor(batch["attention_mask"]),
                              final_only=True, regression=c.is_regression)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), args.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step >= total:
                break
    bar.close()
    seconds = time.perf_counter() - t0
    logits = []
    order = []
    with torch.no_grad():
        for batch in iterate_batches(data.dev, data.dev.labels, 64, sort_by_length=True):
            out = ref(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            logits.append(out.logits[-1].cpu().numpy())
            order.append(batch["indices"])
    z, order = np.concatenate(logits), np.concatenate(order)
    preds = np.empty(len(order), dtype=predictions_from_logits(z, c.is_regression).dtype)
    preds[order] = predictions_from_logits(z, c.is_regression)
    return compute_metrics(data.task, preds, data.dev.labels), seconds, str(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--glue-dir", default=None)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--side", choices=["both", "npcosteff", "torch"], default="both")
    p.add_argument("--output", default="runs/finetune_vs_torch")
    args = p.parse_args(argv)

    data = load_task_data(args.task, args.glue_dir, max_length=args.max_length, max_train=args.max_train,
                          max_eval=args.max_eval)
    L = npcosteff.CostEffConfig.from_json(npcosteff.pretrained.default_model_dir()).num_hidden_layers
    init = npcosteff.from_pretrained(num_labels=data.num_labels, exit_start=L, seed=args.seed,
                                     problem_type="regression" if data.is_regression else "single_label_classification")
    targs = TrainingArguments(task=data.task, objective="hard", epochs=args.epochs, batch_size=args.batch_size,
                              learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                              max_grad_norm=args.max_grad_norm, seed=args.seed, final_only=True,
                              eval_every=10 ** 9, save_best=False)
    out_dir = os.path.join(args.output, data.task)
    results = {"task": data.task, "train_examples": len(data.train), "dev_examples": len(data.dev),
               "args": vars(args), "main_metric": main_metric(data.task)}
    model = init.copy()
    trainer = Trainer(model, targs, data.train, data.dev, output_dir=None)
    if args.side in ("both", "npcosteff"):
        t0 = time.perf_counter()
        trainer.train(resume=False)
        seconds = time.perf_counter() - t0            # includes one dev evaluation at the end
        final = trainer.history[-1]
        results["npcosteff"] = {"metrics": final["exits"][str(L)], "seconds": seconds, "steps": trainer.step}
        print("npcosteff:", json.dumps(results["npcosteff"]))
    if args.side in ("both", "torch"):
        metrics, seconds, device = torch_side(init, data, args, Trainer(init.copy(), targs, data.train, None))
        results["torch"] = {"metrics": metrics, "seconds": seconds, "device": device}
        print("torch reference:", json.dumps(results["torch"]))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"results_{args.side}.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"results written to {os.path.join(out_dir, f'results_{args.side}.json')}")


if __name__ == "__main__":
    main()
