"""Why the demo's SD prior ignored its text: the relative-position bias it starts from (the [demo] issue).

Trains the demo recipe's prior (`tiny` preset, the recipe's steps, batch, lr, EMA and weight decay)
on a preprocessed demo dataset twice from the same seed: once from dalle2-pytorch 1.1.0's initial
bias (N(0, 1), multiplied by 128 in the attention), once from the zero bias that `PriorTask` now
uses. For each it prints the gradient of the fresh network's output with respect to the text
embedding at t = 999, how many draws (16 per class text) are nearest to their own class's mean image
embedding with 1 and 2 candidates, their cosine with it, and the one-step x0 estimate's cosine with
the class mean at high noise levels.

    python benchmarks/prior_position_bias.py ~/.cache/clipsonic/demo-work/dataset
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clipsonic.data import Dataset
from clipsonic.demo import DemoRecipe
from clipsonic.prior import DiffusionPrior, PriorConfig, load_prior
from clipsonic.train.loop import TrainConfig, train
from clipsonic.train.prior import PriorTask, draws_of_their_class, label_image_means

DRAWS_PER_CLASS = 16


def text_gradient(task: PriorTask) -> float:
    net, dim = task.model.net, task.model.config.image_embed_dim
    text = F.normalize(torch.randn(8, dim, generator=torch.Generator().manual_seed(1)), dim=-1).requires_grad_()
    output = net(torch.randn(8, dim), torch.full((8,), 999), text, torch.randn(8, 77, dim))
    (gradient,) = torch.autograd.grad(output.square().sum(), text)
    return gradient.norm().item()


def measure(checkpoint: Path, dataset: Dataset) -> dict:
    model = load_prior(checkpoint)
    generator = torch.Generator().manual_seed(0)
    result = {}
    for candidates in (1, 2):
        similarity, truth = draws_of_their_class(model, dataset, DRAWS_PER_CLASS, candidates, generator)
        result[f"nearest own class, {candidates} cand."] = f"{(similarity.argmax(1) == truth).float().mean():.0%}"
        result[f"cosine with own class, {candidates} cand."] = f"{similarity[torch.arange(len(truth)), truth].mean():.3f}"
    labels = dataset.labels()
    text = torch.from_numpy(labels["text_embeddings"])
    tokens = torch.from_numpy(labels["token_encodings"])
    clean = label_image_means(dataset) * model.config.image_embed_scale
    for step in (700, 900, 984):
        abar = model.noise_scheduler.alphas_cumprod[step]
        noisy = abar.sqrt() * clean + (1 - abar).sqrt() * torch.randn(clean.shape, generator=generator)
        with torch.no_grad():
            estimate = model.net(noisy, torch.full((len(clean),), step), F.normalize(text, dim=-1), tokens)
        result[f"x0 cosine at t={step}"] = f"{F.cosine_similarity(estimate, clean).mean():.3f}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="a demo dataset folder (the retrain's work/dataset)")
    args = parser.parse_args()
    recipe = DemoRecipe()
    dataset = Dataset(args.dataset, split="train")
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for start in ("1.1.0's N(0, 1) bias", "zero bias (PriorTask)"):
            torch.manual_seed(recipe.seed)
            task = PriorTask(dataset, PriorConfig.preset("tiny"))
            if start.startswith("1.1.0"):  # the bias as the same seed drew it, before PriorTask zeroed it
                torch.manual_seed(recipe.seed)
                with torch.no_grad():
                    task.model.position_bias.copy_(DiffusionPrior(task.model.config).position_bias)
            row = {"text gradient at t=999, fresh": f"{text_gradient(task):.3g}"}
            began = time.perf_counter()
            checkpoint = train(task, TrainConfig(steps=recipe.prior_steps, batch_size=recipe.prior_batch,
                                                 lr=recipe.prior_lr, weight_decay=0.06, ema_decay=recipe.ema,
                                                 save_every=recipe.prior_steps, keep=0, seed=recipe.seed, bf16=True),
                               Path(scratch) / str(len(rows)), progress=False)
            row["training s"] = f"{time.perf_counter() - began:.0f}"
            rows[start] = {**row, **measure(checkpoint, dataset)}
    columns = list(next(iter(rows.values())))
    print("| prior start | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for start, row in rows.items():
        print(f"| {start} | " + " | ".join(row[c] for c in columns) + " |")


if __name__ == "__main__":
    main()
