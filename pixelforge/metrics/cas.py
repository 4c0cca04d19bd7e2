"""Classification accuracy score (Ravuri & Vinyals 2019): how useful generated labelled images are
for training a classifier that is then tested on real held-out images, beside the same classifier
trained on as many real images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallClassifier(nn.Module):
    """Three conv stages with GroupNorm and a global-average-pooled linear head; any size or channels."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()

        def stage(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.ReLU()]

        self.body = nn.Sequential(
            *stage(channels, width), nn.MaxPool2d(2),
            *stage(width, 2 * width), nn.MaxPool2d(2),
            *stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [-1, 1] -> (B, K) logits
        return self.head(self.body(x))


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 8,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0, device: str | torch.device = "auto",
                     progress=None) -> SmallClassifier:
    """Adam on cross-entropy with a fixed seed (initialisation and order), so a figure can be repeated."""
    from ..device import pick_device

    device = pick_device(device) if isinstance(device, str) else device
    with torch.random.fork_rng(devices=[]):  # seeded initialisation that leaves the caller's random state alone
        torch.manual_seed(seed)
        model = SmallClassifier(images.shape[1], num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = _as_float(images), labels.long()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_all), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(x_all[idx].to(device)), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 256) -> float:
    device = next(model.parameters()).device
    x = _as_float(images)
    correct = 0
    for xb, yb in zip(x.split(batch_size), labels.split(batch_size)):
        correct += int((model(xb.to(device)).argmax(1).cpu() == yb).sum())
    return correct / max(len(labels), 1)


def balanced_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of n items with the classes as even as the data allow, drawn in a seeded random order.

    Data sets are often stored class by class (the bundled digits are), so a prefix of n items
    could hold only the first few classes."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    ranked = labels[order].long()
    rank = torch.zeros(len(labels), dtype=torch.long)  # each item's rank among its class in `order`
    for c in ranked.unique():
        members = (ranked == c).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    # first every class's first item, then every class's second, ...: a stable sort on the rank
    picked = order[torch.sort(rank, stable=True).indices[:n]]
    return picked.sort().values


def classification_accuracy_score(
    generated: torch.Tensor, generated_labels: torch.Tensor,
    real_train: torch.Tensor, real_train_labels: torch.Tensor,
    real_test: torch.Tensor, real_test_labels: torch.Tensor,
    num_classes: int, *, epochs: int = 8, seed: int = 0, device: str | torch.device = "auto", progress: bool = False,
) -> dict:
    """{"cas": accuracy on real test images of a classifier trained on generated images,
    "real_accuracy": the same classifier trained on as many real images, ...}. When one side has more
    images, both train on a class-balanced, seeded subset of n = the smaller count."""
    from ..device import pick_device

    device = pick_device(device) if isinstance(device, str) else device
    n = min(len(generated), len(real_train))
    g_idx = balanced_subset(generated_labels, n, seed)
    r_idx = balanced_subset(real_train_labels, n, seed)
    from ..progress import stage_bar

    models = []
    for what, x, y in (("generated", generated[g_idx], generated_labels[g_idx]), ("real", real_train[r_idx], real_train_labels[r_idx])):
        with stage_bar(epochs, f"classifier on {what} images", unit="epoch", enabled=progress) as bar:
            models.append(train_classifier(x, y, num_classes, epochs=epochs, seed=seed, device=device,
                                           progress=lambda done, total: bar.update(done - bar.n)))
    gen_model, real_model = models
    return {
        "cas": accuracy(gen_model, real_test, real_test_labels),
        "real_accuracy": accuracy(real_model, real_test, real_test_labels),
        "n_train": n,
        "n_test": int(len(real_test)),
        "epochs": epochs,
        "classifier": "SmallClassifier (3 conv stages, GroupNorm, width 32)",
    }
