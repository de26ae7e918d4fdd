"""PyTorch CPU baseline for the IMDB models: times float32 train steps and prints one JSON object.

    bench/.venv/bin/python bench/python/imdb_torch_bench.py --threads 2 --steps 20 --models dense,rnn,lstm

Models (same shapes as the Rust side):
  dense: multi-hot (batch, max_features) -> Linear(max_features,16)-ReLU-Linear(16,16)-ReLU-Linear(16,1)
  rnn:   token ids (batch, maxlen) -> Embedding(max_features, embed) -> nn.RNN(tanh, batch_first)
         -> Linear(hidden, 1) on the last hidden state
  lstm:  the same with nn.LSTM
One step = zero_grad, forward, BCEWithLogitsLoss against 0/1 labels, backward, RMSprop(lr=1e-3).
Inputs are seeded random ids in [1, max_features) and random labels (no data set is read); the
dense model's multi-hot rows are built from ids of the same shape. --warmup steps run untimed.
Run it on an idle machine: with --threads 2 on 2 cores, one busy process (a cargo build) makes
OpenMP's spin-waits inflate step times 10-60x (dense went from 2 ms to 120 ms).
Output: {"torch", "threads", "batch", "maxlen", ..., "results": {model: {median_ms, min_ms, steps}}}.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn


class Recurrent(nn.Module):
    def __init__(self, cell, max_features, embed, hidden):
        super().__init__()
        self.embedding = nn.Embedding(max_features, embed)
        self.rnn = cell(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, ids):
        _, state = self.rnn(self.embedding(ids))
        h = state[0] if isinstance(state, tuple) else state  # (1, batch, hidden)
        return self.head(h[-1]).squeeze(1)


def build(name, a):
    if name == "dense":
        return nn.Sequential(nn.Linear(a.max_features, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                             nn.Linear(16, 1), nn.Flatten(0))
    if name == "rnn":
        return Recurrent(lambda i, h, **kw: nn.RNN(i, h, nonlinearity="tanh", **kw),
                         a.max_features, a.embed, a.hidden)
    if name == "lstm":
        return Recurrent(nn.LSTM, a.max_features, a.embed, a.hidden)
    raise SystemExit(f"unknown model {name!r} (dense, rnn, lstm)")


def bench(name, a):
    torch.manual_seed(0)
    model = build(name, a)
    ids = torch.randint(1, a.max_features, (a.batch, a.maxlen))
    labels = torch.randint(0, 2, (a.batch,)).float()
    if name == "dense":
        x = torch.zeros(a.batch, a.max_features).scatter_(1, ids, 1.0)  # multi-hot
    else:
        x = ids
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "steps": len(times),
            "final_loss": loss.item()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--maxlen", type=int, default=500)
    p.add_argument("--max-features", type=int, default=10000)
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--models", default="dense,rnn,lstm")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(a.threads)
    results = {m: bench(m, a) for m in a.models.split(",") if m}
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "batch": a.batch,
                      "maxlen": a.maxlen, "max_features": a.max_features, "embed": a.embed,
                      "hidden": a.hidden, "warmup": a.warmup, "results": results}))


if __name__ == "__main__":
    main()
