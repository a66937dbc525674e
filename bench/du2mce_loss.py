"""Speed of DU2MCE's mixture loss (Eq. 1-4), vectorised over the batch, against a per-post reference.

The reference evaluates Eq. 4 anchor by anchor in Python (what the paper's notation reads as); the
library computes one cosine matrix per pair. Both give the same value (checked here); the bench prints
the forward + backward time of each and their ratio, at the paper's batch of 1000 posts and D = 1024.

    .venv/bin/python bench/du2mce_loss.py --batch 1000 --users 300 --repeat 3
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mmsocial.models.du2mce import PAIRS, DU2MCELoss, du2mce


def reference_loss(model, image, tokens, user, has_image, has_text, has_user):
    """Eq. 1-4 with one Python loop per anchor (negatives: the batch's other users / texts)."""
    cfg, m = model.cfg, model.cfg.margin
    x_I = F.normalize(model.encode_image(image), dim=1, eps=1e-8)  # Eq. 3 on unit vectors
    x_T = F.normalize(model.encode_text(tokens), dim=1, eps=1e-8)
    users = sorted(set(user[has_user].tolist()))
    x_U = F.normalize(model.encode_user(torch.tensor(users)), dim=1, eps=1e-8)
    texts = x_T[has_text]
    total = x_I.sum() * 0
    for pair, lam in zip(PAIRS, cfg.lambdas):
        if lam == 0:
            continue
        term, n = 0.0, 0
        for j in range(len(user)):
            if pair == "T-U" and has_text[j] and has_user[j]:
                a, cands, pos = x_T[j], x_U, users.index(int(user[j]))
            elif pair == "I-T" and has_image[j] and has_text[j]:
                a, cands, pos = x_I[j], texts, int(has_text[:j].sum())
            elif pair == "I-U" and has_image[j] and has_user[j]:
                a, cands, pos = x_I[j], x_U, users.index(int(user[j]))
            else:
                continue
            s = cands @ a
            hinge = (m - s[pos] + s).clamp_min(0)
            term = term + hinge.sum() - hinge[pos]
            n += 1
        if n:
            total = total + lam * term / n
    return total


def timed(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = du2mce("paper", vocab_size=5000, num_users=args.users, image_dim=1280, lambdas=(0.1, 0.45, 0.45))
    b = args.batch
    g = torch.Generator().manual_seed(0)
    image = torch.randn(b, 1280, generator=g)
    tokens = torch.randint(2, 5000, (b, 20), generator=g)
    user = torch.randint(0, args.users, (b,), generator=g)
    has_image = torch.rand(b, generator=g) < 0.3  # Twitter-like: most posts have no image
    has_text = torch.rand(b, generator=g) < 0.95
    has_user = torch.ones(b, dtype=torch.bool)
    loss_fn = DU2MCELoss(model.cfg)
    args_ = (image, tokens, user, has_image, has_text, has_user)
    fast = loss_fn(model, *args_)["loss"]
    slow = reference_loss(model, *args_)
    print(f"loss: vectorised {fast.item():.6f}, reference {slow.item():.6f}, "
          f"abs diff {abs(fast.item() - slow.item()):.2e}")

    def step(f):
        model.zero_grad(set_to_none=True)
        f().backward()

    t_fast = timed(lambda: step(lambda: loss_fn(model, *args_)["loss"]), args.repeat)
    t_slow = timed(lambda: step(lambda: reference_loss(model, *args_)), args.repeat)
    print(f"forward+backward, batch {b}, {args.users} users, {args.threads} thread(s): vectorised {t_fast:.3f} s, "
          f"per-post reference {t_slow:.3f} s, ratio {t_slow / t_fast:.1f}x")


if __name__ == "__main__":
    main()
