#!/usr/bin/env python3
"""A small PyTorch training job, written the way a customer would write one.

It trains a tiny CNN for a few batches on synthetic, image-sized data, and touches what real
training scripts touch:

  * a DataLoader with worker processes, so that every batch (64 x 3 x 224 x 224 float32,
    about 37 MiB) travels through shared memory (/dev/shm). With Docker's default 64 MiB
    /dev/shm this dies with PyTorch's "Bus error ... insufficient shared memory (shm)";
  * a cache directory under ~/.cache (so $HOME must be writable);
  * a temporary file from the tempfile module (so $TMPDIR, or /tmp, must be writable);
  * a checkpoint (torch.save) and metrics.json in $GP4U_OUTPUT_DIR (default /output).

It downloads nothing. It uses CUDA when torch.cuda.is_available(), else the CPU. On success
its last line starts with "TRAINING COMPLETE"; any failure exits non-zero.

Environment (all optional): GP4U_OUTPUT_DIR (/output), GP4U_EPOCHS (2),
GP4U_BATCHES_PER_EPOCH (6), GP4U_BATCH_SIZE (64), GP4U_NUM_WORKERS (2).
"""

import json
import os
import sys
import tempfile
import time
import traceback

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 224, 224)
SEED = 1234


def env_int(name, default):
    return int(os.environ.get(name, default))


class SyntheticImages(Dataset):
    """Image-sized tensors, the same for the same index: noise plus a class-dependent offset
    per channel, so that there is something to learn."""

    def __init__(self, length):
        self.length = length
        generator = torch.Generator().manual_seed(SEED)
        self.class_means = torch.randn(NUM_CLASSES, IMAGE_SHAPE[0], 1, 1, generator=generator)

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(SEED + 1 + index)
        label = index % NUM_CLASSES
        image = torch.randn(IMAGE_SHAPE, generator=generator) + self.class_means[label]
        return image, label


class TinyCNN(nn.Module):
    """Downsamples fast (224 -> 56 -> 14 -> 7), so that a CPU trains it in seconds."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=7, stride=4, padding=3),  # 56 x 56
            nn.ReLU(inplace=True),
            nn.MaxPool2d(4),  # 14 x 14
            nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),  # 7 x 7
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def shm_size_mib():
    try:
        st = os.statvfs("/dev/shm")
        return st.f_blocks * st.f_frsize // (1024 * 1024)
    except OSError:
        return None


def main():
    started = time.monotonic()
    epochs = env_int("GP4U_EPOCHS", 2)
    batches_per_epoch = env_int("GP4U_BATCHES_PER_EPOCH", 6)
    batch_size = env_int("GP4U_BATCH_SIZE", 64)
    num_workers = env_int("GP4U_NUM_WORKERS", 2)
    output_dir = os.environ.get("GP4U_OUTPUT_DIR", "/output")

    torch.manual_seed(SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        print(f"device: cuda ({torch.cuda.get_device_name(0)})", flush=True)
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads)", flush=True)
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, "
          f"/dev/shm {shm_size_mib()} MiB", flush=True)

    # What real scripts do before training: a cache directory and a scratch file.
    cache_dir = os.path.expanduser("~/.cache/gp4u-train")
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, "run-info.json"), "w") as f:
        json.dump({"pid": os.getpid(), "started": time.time()}, f)
    print(f"cache dir: {cache_dir}", flush=True)

    with tempfile.NamedTemporaryFile("w+", prefix="gp4u-train-", suffix=".txt") as tmp:
        tmp.write("scratch\n")
        tmp.flush()
        tmp.seek(0)
        assert tmp.read() == "scratch\n"
        print(f"temp file: {tmp.name}", flush=True)

    os.makedirs(output_dir, exist_ok=True)

    dataset = SyntheticImages(length=batches_per_epoch * batch_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )

    model = TinyCNN().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    epoch_losses = []
    samples = 0
    train_started = time.monotonic()
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for batch, (images, labels) in enumerate(loader, start=1):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            total += loss.item()
            samples += images.shape[0]
            print(f"epoch {epoch}/{epochs} batch {batch}/{len(loader)} loss {loss.item():.4f}",
                  flush=True)
        epoch_losses.append(total / len(loader))
        print(f"epoch {epoch}/{epochs} mean loss {epoch_losses[-1]:.4f}", flush=True)
    train_seconds = time.monotonic() - train_started

    checkpoint_path = os.path.join(output_dir, "checkpoint.pt")
    partial_path = checkpoint_path + ".partial"
    torch.save({"epoch": epochs, "model": model.state_dict(),
                "optimizer": optimizer.state_dict()}, partial_path)
    os.replace(partial_path, checkpoint_path)
    # Read it back: a checkpoint that does not load is a failure.
    reloaded = torch.load(checkpoint_path, map_location="cpu")
    TinyCNN().load_state_dict(reloaded["model"])
    checkpoint_bytes = os.path.getsize(checkpoint_path)

    metrics = {
        "device": device.type,
        "torch": torch.__version__,
        "epochs": epochs,
        "batches_per_epoch": len(loader),
        "batch_size": batch_size,
        "num_workers": num_workers,
        "samples": samples,
        "epoch_mean_loss": epoch_losses,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(samples / train_seconds, 1) if train_seconds > 0 else None,
        "total_seconds": round(time.monotonic() - started, 3),
        "checkpoint_bytes": checkpoint_bytes,
    }
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")

    print(f"TRAINING COMPLETE: {checkpoint_path} ({checkpoint_bytes} bytes), "
          f"{samples} samples in {train_seconds:.1f}s on {device.type}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        print("TRAINING FAILED", file=sys.stderr, flush=True)
        sys.exit(1)
