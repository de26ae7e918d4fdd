"""PyTorch CPU baseline for the DCGAN job: times float32 train steps and single layers, prints one JSON line.

    bench/.venv/bin/python bench/python/dcgan_torch_bench.py --threads 2 --batch 256 --steps 10

The TensorFlow DCGAN tutorial's models in PyTorch, NCHW, float32 (padding for TF 'same' as in
CANDLE-NOTES.md; LeakyReLU slope 0.3 = Keras' default alpha, which the tutorial uses; BatchNorm
eps 1e-3, momentum 0.01 = Keras momentum 0.99; PyTorch's default inits, not Keras' glorot):
  generator:     Linear(noise, 7*7*256, bias=False) BN1d LeakyReLU -> view (256,7,7)
                 -> ConvT(256,128,5,s1,p2,bias=False) BN2d LeakyReLU
                 -> ConvT(128,64,5,s2,p2,op1,bias=False) BN2d LeakyReLU
                 -> ConvT(64,1,5,s2,p2,op1,bias=False) tanh                      -> (B,1,28,28)
  discriminator: Conv(1,64,5,s2,p2) LeakyReLU Dropout(.3) -> Conv(64,128,5,s2,p2) LeakyReLU
                 Dropout(.3) -> Flatten -> Linear(128*7*7, 1)                    -> logits (B,1)
One step (the tutorial's train_step, written the usual PyTorch way): noise ~ N(0,1) -> fake = G(noise)
once; disc_loss = BCEWithLogits(D(real), 1) + BCEWithLogits(D(fake.detach()), 0);
gen_loss = BCEWithLogits(D(fake), 1); both losses are taken with the same D weights, then
gen_loss.backward() (into G; the D weight grads it leaves are zeroed), disc_loss.backward(), and both
Adam steps (lr 1e-4, betas (0.9, 0.999), eps 1e-7, as Keras). D therefore runs forward three times
(real, detached fake, fake) where the tutorial's tape runs it twice; the extra pass is ~a tenth of
the step. Real images are a fixed seeded uniform [-1, 1] batch (no data set is read).

Per layer ("results" keys other than dcgan_step), at the shapes they have in the step with --batch:
forward with autograd on (input requires grad), then backward of a fixed random upstream gradient
(grads for the input and the weights); medians in ms. --warmup iterations run untimed.

Run it on an idle machine: with --threads 2 on 2 shared cores, OpenMP worker threads spin-wait, so
one other busy process (a cargo build) makes the numbers noisy and inflated, sometimes many times
over. "loadavg_1m" in the output is the 1-minute load average when the run started.
Output: {"torch", "threads", "batch", "noise", "warmup", "loadavg_1m", "results": {"dcgan_step":
{median_ms, min_ms, steps, d_loss, g_loss}, "<layer>": {fwd_ms, bwd_ms}, ...}}.
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn as nn

ALPHA = 0.3  # Keras LeakyReLU default alpha
BN = dict(eps=1e-3, momentum=0.01)


class Generator(nn.Module):
    def __init__(self, noise):
        super().__init__()
        self.dense = nn.Sequential(nn.Linear(noise, 7 * 7 * 256, bias=False),
                                   nn.BatchNorm1d(7 * 7 * 256, **BN), nn.LeakyReLU(ALPHA))
        self.convs = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 5, stride=1, padding=2, bias=False),
            nn.BatchNorm2d(128, **BN), nn.LeakyReLU(ALPHA),
            nn.ConvTranspose2d(128, 64, 5, stride=2, padding=2, output_padding=1, bias=False),
            nn.BatchNorm2d(64, **BN), nn.LeakyReLU(ALPHA),
            nn.ConvTranspose2d(64, 1, 5, stride=2, padding=2, output_padding=1, bias=False),
            nn.Tanh())

    def forward(self, z):
        return self.convs(self.dense(z).view(-1, 256, 7, 7))


def discriminator():
    return nn.Sequential(
        nn.Conv2d(1, 64, 5, stride=2, padding=2), nn.LeakyReLU(ALPHA), nn.Dropout(0.3),
        nn.Conv2d(64, 128, 5, stride=2, padding=2), nn.LeakyReLU(ALPHA), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1))


def adam(params):
    return torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-7)


def bench_step(a):
    torch.manual_seed(0)
    gen, disc = Generator(a.noise), discriminator()
    gen.train()
    disc.train()
    g_opt, d_opt = adam(gen.parameters()), adam(disc.parameters())
    bce = nn.BCEWithLogitsLoss()
    real = torch.rand(a.batch, 1, 28, 28) * 2 - 1
    ones, zeros = torch.ones(a.batch, 1), torch.zeros(a.batch, 1)
    # Sanity: the shapes of the tutorial (7 -> 7 -> 14 -> 28; D -> 14 -> 7 -> 1).
    with torch.no_grad():
        assert gen(torch.randn(2, a.noise)).shape == (2, 1, 28, 28)
        assert disc(real[:2]).shape == (2, 1)
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        noise = torch.randn(a.batch, a.noise)
        fake = gen(noise)
        d_loss = bce(disc(real), ones) + bce(disc(fake.detach()), zeros)
        g_loss = bce(disc(fake), ones)
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        d_opt.zero_grad(set_to_none=True)  # drop the D grads gen_loss left
        d_loss.backward()
        d_opt.step()
        g_opt.step()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "steps": len(times),
            "d_loss": d_loss.item(), "g_loss": g_loss.item()}


def bench_layer(layer, in_shape, a):
    torch.manual_seed(1)
    layer.train()
    x = torch.randn(*in_shape, requires_grad=True)
    with torch.no_grad():
        grad_out = torch.randn(layer(x).shape)
    fwd, bwd = [], []
    for i in range(a.warmup + a.steps):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        t0 = time.perf_counter()
        out = layer(x)
        t1 = time.perf_counter()
        out.backward(grad_out)
        t2 = time.perf_counter()
        if i >= a.warmup:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
    return {"fwd_ms": statistics.median(fwd), "bwd_ms": statistics.median(bwd)}


def layers(b):
    return {
        "convt_256_128_7x7": (nn.ConvTranspose2d(256, 128, 5, stride=1, padding=2, bias=False),
                              (b, 256, 7, 7)),
        "convt_128_64_s2": (nn.ConvTranspose2d(128, 64, 5, stride=2, padding=2, output_padding=1,
                                               bias=False), (b, 128, 7, 7)),
        "convt_64_1_s2": (nn.ConvTranspose2d(64, 1, 5, stride=2, padding=2, output_padding=1,
                                             bias=False), (b, 64, 14, 14)),
        "conv_1_64_s2": (nn.Conv2d(1, 64, 5, stride=2, padding=2), (b, 1, 28, 28)),
        "conv_64_128_s2": (nn.Conv2d(64, 128, 5, stride=2, padding=2), (b, 64, 14, 14)),
        f"bn2d_train_{b}x64x14x14": (nn.BatchNorm2d(64, **BN), (b, 64, 14, 14)),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--noise", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(a.threads)
    load = os.getloadavg()[0]
    results = {"dcgan_step": bench_step(a)}
    for name, (layer, shape) in layers(a.batch).items():
        results[name] = bench_layer(layer, shape, a)
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "batch": a.batch,
                      "noise": a.noise, "warmup": a.warmup, "loadavg_1m": load,
                      "results": results}))


if __name__ == "__main__":
    main()
