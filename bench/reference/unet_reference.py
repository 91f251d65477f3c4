#!/usr/bin/python3
"""The Python reference of miseg's training step and inference, in PyTorch eager.

What `miseg-bench train` and `miseg-bench infer` measure, written the way a researcher
would write it in Python on the same libtorch (Debian's python3-torch), so every miseg
figure can be printed beside PyTorch eager's in the same run (issue 15):

- the U-Net of core/train/unet.cc (same layers, same parameter count: `params`);
- one semi-supervised step of docs/method.md: sampling, the affine augmentation, the
  dihedral perturbation T and the intensity perturbation, cross-entropy on the labeled
  batch, the MI loss (all J_t from one convolution) and the consistency loss on the
  unlabeled batch, Adam with weight decay. `--form two_pass` is the project's form (x and
  T x in one forward pass); `--form three_forward` is the method's literal form (labeled,
  x and T x each in a forward pass of its own);
- inference: the network in eval mode under no_grad on batches of slices, softmax, argmax.

Weights are random: timing does not depend on them. Prints one JSON object per command.
On a GPU (`--device cuda`, bench/gpu.sh): `--amp bf16` runs the forward passes under
torch.autocast in bfloat16 with the losses in float32 (as miseg does on CUDA), `--compile`
wraps the network in torch.compile (PyTorch 2.x), `--channels-last` puts it in NHWC.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def double_conv(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """core/train/unet.cc: two 3x3 conv + BN + ReLU per level, max-pool down, transposed
    convolution up, skips by concatenation, a 1x1 head."""

    def __init__(self, in_channels=1, classes=4, widths=(16, 32, 64, 128, 256)):
        super().__init__()
        w = list(widths)
        self.encoders = nn.ModuleList(
            double_conv(in_channels if i == 0 else w[i - 1], w[i]) for i in range(len(w)))
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in range(len(w) - 1))
        self.decoders = nn.ModuleList(double_conv(2 * w[i], w[i]) for i in range(len(w) - 1))
        self.head = nn.Conv2d(w[0], classes, 1)

    def forward(self, x):
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = F.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        for level in reversed(range(len(self.upsamplers))):
            x = self.upsamplers[level](x)
            x = self.decoders[level](torch.cat([skips[level], x], 1))
        return self.head(x)


def mutual_information_loss(a, c, d=1, lam=1.0, eps=1e-8):
    """core/train/losses.cc: every J_t from one convolution, symmetrised, -mean_t I_t."""
    k = a.size(1)
    joint = F.conv2d(a.transpose(0, 1), c.transpose(0, 1), padding=d)
    joint = joint.permute(2, 3, 0, 1).reshape((2 * d + 1) ** 2, k, k)
    joint = joint / joint.sum((1, 2), keepdim=True)
    joint = (joint + joint.transpose(1, 2)) / 2
    r = joint.sum(2, keepdim=True)
    s = joint.sum(1, keepdim=True)
    info = (joint * (torch.log(joint.clamp_min(eps)) - lam * torch.log(r.clamp_min(eps))
                     - lam * torch.log(s.clamp_min(eps)))).sum((1, 2))
    return -info.mean()


def augment(images, labels, max_deg=45.0, flip_p=0.5, imin=0.5, imax=1.5):
    """core/train/preprocess.cc Augment: rotation, flips, intensity scale by one affine grid."""
    b = images.size(0)
    angle = (torch.rand(b) * 2 - 1) * max_deg * math.pi / 180
    sx = torch.where(torch.rand(b) < flip_p, -1.0, 1.0)
    sy = torch.where(torch.rand(b) < flip_p, -1.0, 1.0)
    theta = torch.stack([torch.cos(angle) * sx, -torch.sin(angle) * sy, torch.zeros(b),
                         torch.sin(angle) * sx, torch.cos(angle) * sy, torch.zeros(b)], 1).view(b, 2, 3)
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    images = images * (imin + (imax - imin) * torch.rand(b, 1, 1, 1, device=images.device))
    if labels is not None:
        labels = F.grid_sample(labels.unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False).squeeze(1).round().long()
    return images, labels


def sample_dihedral(n, flip_p=0.8):
    return [(bool(torch.rand(1) < flip_p), bool(torch.rand(1) < flip_p), int(torch.randint(4, (1,))))
            for _ in range(n)]


def apply_dihedral(transforms, x):
    parts = []
    for i, (fr, fc, q) in enumerate(transforms):
        y = x[i:i + 1]
        if fr:
            y = y.flip(-2)
        if fc:
            y = y.flip(-1)
        if q:
            y = torch.rot90(y, q, (-2, -1))
        parts.append(y)
    return torch.cat(parts, 0)


def perturb_intensity(x, contrast=0.2, gamma=0.3, noise=0.05):
    b = x.size(0)
    c = 1 - contrast + 2 * contrast * torch.rand(b, 1, 1, 1, device=x.device)
    g = 1 - gamma + 2 * gamma * torch.rand(b, 1, 1, 1, device=x.device)
    flat = x.reshape(b, -1)
    lo = flat.min(1).values.view(b, 1, 1, 1)
    hi = flat.max(1).values.view(b, 1, 1, 1)
    rng = (hi - lo).clamp_min(1e-6)
    y = lo + rng * torch.pow((x - lo) / rng, g)
    mean = y.mean((1, 2, 3), keepdim=True)
    y = mean + (y - mean) * c
    return y + noise * torch.randn(x.shape, device=x.device)


def phantom_like(slices, size, classes):
    """Prepared slices and labels: concentric discs on noise (values do not change timing)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    radius = (yy ** 2 + xx ** 2).sqrt()
    labels = torch.zeros(slices, size, size, dtype=torch.long)
    for k in range(1, classes):
        labels[:, radius < 0.6 - 0.15 * k] = k
    images = labels.float().unsqueeze(1) + 0.3 * torch.randn(slices, 1, size, size)
    return images, labels


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, warmup, steps, device):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times), max(times)


def forward_fn(args, model):
    """The network's forward pass; under bf16 autocast with float32 logits when --amp bf16."""
    if args.amp != "bf16":
        return model

    def forward(x):
        with torch.autocast(device_type=args.device_obj.type, dtype=torch.bfloat16):
            return model(x).float()
    return forward


def run_train(args, model, net):
    images, labels = (t.to(args.device_obj) for t in phantom_like(40, args.size, args.classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    model.train()
    state = {"step": 0}

    def step():
        li = torch.randint(images.size(0), (args.labeled_batch,))
        xl, yl = augment(images[li], labels[li])
        ui = torch.randint(images.size(0), (args.unlabeled_batch,))
        xu, _ = augment(images[ui], None)
        transforms = sample_dihedral(args.unlabeled_batch)
        xp = perturb_intensity(apply_dihedral(transforms, xu))
        sup = F.cross_entropy(net(xl), yl)
        n = args.unlabeled_batch
        if args.form == "two_pass":
            probs = torch.softmax(net(torch.cat([xu, xp], 0)), 1)
            p, cp = probs[:n], probs[n:]
        else:
            p = torch.softmax(net(xu), 1)
            cp = torch.softmax(net(xp), 1)
        a = apply_dihedral(transforms, p)
        mi = mutual_information_loss(a, cp, args.window)
        cons = (cp - a.detach()).pow(2).mean()
        w = math.exp(-5 * (1 - min(state["step"], 500) / 500) ** 2)
        loss = sup + w * (5.0 * cons + 0.1 * mi)
        for group in opt.param_groups:
            group["lr"] = 1e-3
        opt.zero_grad()
        loss.backward()
        opt.step()
        state["step"] += 1
        # miseg reports every term each step: the same synchronisations.
        loss.item(), sup.item(), mi.item(), cons.item()

    med, lo, hi = median_ms(step, args.warmup, args.steps, args.device_obj)
    return {"step_ms_median": med, "step_ms_min": lo, "step_ms_max": hi, "form": args.form}


def run_infer(args, model, net):
    images, _ = phantom_like(args.slices, args.size, args.classes)
    images = images.to(args.device_obj)
    model.eval()

    def infer():
        with torch.no_grad():
            for start in range(0, images.size(0), args.batch_slices):
                logits = net(images[start:start + args.batch_slices])
                torch.softmax(logits, 1).argmax(1)

    med, lo, hi = median_ms(infer, args.warmup, args.steps, args.device_obj)
    return {"ms_median": med, "ms_min": lo, "ms_max": hi}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["train", "infer", "params", "shapes"])
    p.add_argument("--size", type=int, default=128, help="model grid (train) / slice size (infer)")
    p.add_argument("--labeled-batch", type=int, default=4)
    p.add_argument("--unlabeled-batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--widths", default="16,32,64,128,256")
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--form", choices=["two_pass", "three_forward"], default="two_pass")
    p.add_argument("--slices", type=int, default=10)
    p.add_argument("--batch-slices", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (2.x)")
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    args.device_obj = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = UNet(1, args.classes, [int(w) for w in args.widths.split(",")])
    if args.command == "shapes":
        # One line per parameter and buffer, "name 16x1x3x3", in the names LibTorch's
        # named_parameters()/named_buffers() give miseg's U-Net (tests compare the two).
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            print(name, "x".join(str(d) for d in t.shape) or "scalar")
        return 0
    out = {"command": args.command, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "params": sum(t.numel() for t in model.parameters())}
    model = model.to(args.device_obj)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compiled = torch.compile(model) if args.compile else model
    net = forward_fn(args, compiled)
    out.update({"device": args.device, "amp": args.amp, "compile": args.compile})
    if args.command == "train":
        out.update(run_train(args, model, net))
    elif args.command == "infer":
        out.update(run_infer(args, model, net))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
