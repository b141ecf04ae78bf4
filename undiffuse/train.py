"""The training loop: AdamW with warm-up, gradient clipping, EMA, bf16 autocast, atomic checkpoints
and exact resume.

Everything random in a step comes from state saved in the checkpoint: the batch order is a
function of (seed, epoch), the levels t, noise and label dropout come from one torch.Generator
whose state is saved, and dropout inside the network uses torch's global RNG, also saved. So on
CPU a run stopped and resumed produces the same weights as one that never stopped.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import (latest_checkpoint, load_weights, optimizer_from_flat, read_json,
                         save_checkpoint, write_json)
from .config import TrainConfig
from .data import TensorData, load_dataset
from .denoiser import Denoiser
from .losses import diffusion_loss
from .nets import build_net, net_config
from .processes import make_process


#: Settings a resumed run may change: when to stop and what to write, never the maths.
RESUMABLE_CHANGES = {"steps", "out", "max_minutes", "sample_every", "checkpoint_every", "log_every",
                     "num_samples", "sampler", "sample_steps", "guidance"}


class NonFiniteLossError(RuntimeError):
    pass


def build_denoiser(cfg: TrainConfig, data: TensorData) -> Denoiser:
    """The network sized to the data, wrapped with the configured process and parameterization."""
    images = data.x.ndim == 4
    num_classes = data.num_classes if (cfg.class_conditional and data.labels is not None) else None
    out_mult = 2 if cfg.learn_variance else 1
    if images:
        c, size = data.x.shape[1], data.x.shape[-1]
        net = build_net(cfg.net, in_channels=c, out_channels=out_mult * c, image_size=size,
                        num_classes=num_classes)
    else:
        d = data.x.shape[1]
        net = build_net(cfg.net, dim=d, out_dim=out_mult * d, num_classes=num_classes)
    return Denoiser(net, make_process(cfg.process), cfg.prediction,
                    learn_variance=cfg.learn_variance, clip_x0=cfg.clip_x0 if images else None)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA with warm-up: decay_k = min(decay, (1 + k) / (10 + k)) (as in Song et al. 2021's code
    and diffusers' EMAModel), so early averages are not dominated by the random init."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1 - d)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to 0 at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return cfg.lr


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The indices of batch ``step``: epochs are seeded permutations, last partial batch dropped."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size]


class Trainer:
    """Owns the model, EMA, optimizer and RNG for one run directory."""

    def __init__(self, cfg: TrainConfig, data: TensorData | None = None):
        cfg.validate()
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.data = data if data is not None else load_dataset(
            cfg.data, image_size=cfg.image_size, channels=cfg.channels, on_bad_image=cfg.on_bad_image,
            labels_from_subfolders=cfg.labels_from_subfolders)
        self.denoiser = build_denoiser(cfg, self.data)
        self.ema = copy.deepcopy(self.denoiser).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.denoiser.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0

    @property
    def num_classes(self) -> int | None:
        return getattr(self.denoiser.net, "num_classes", None)

    # --- persistence ---------------------------------------------------------------------------

    def run_config(self) -> dict:
        return {"train": asdict(self.cfg), "net": net_config(self.denoiser.net),
                "process": self.denoiser.process.config(), "denoiser": self.denoiser.config(),
                "data": {"name": self.data.name, "shape": list(self.data.x.shape[1:]),
                         "num_classes": self.num_classes,
                         "class_names": self.data.class_names}}

    def save(self) -> Path:
        rng = {"generator": self.gen.get_state(), "torch_global": torch.get_rng_state()}
        return save_checkpoint(self.run_dir, self.step, self.denoiser, self.ema, self.opt, rng,
                               {"time": time.time()})

    def resume(self) -> bool:
        """Load the newest checkpoint if one exists; True when resumed."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        saved = read_json(self.run_dir / "config.json")["train"]
        # Compare in JSON form: config.json turns tuples (as in UNET_PRESETS) into lists.
        current = json.loads(json.dumps(asdict(self.cfg)))
        changed = {k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]}
        if changed:
            raise ValueError(f"cannot resume {self.run_dir}: settings differ from the saved run "
                             f"({', '.join(sorted(changed))}); use the same settings or a new --out")
        self.denoiser.load_state_dict(load_weights(ckpt / "model.safetensors"))
        self.ema.load_state_dict(load_weights(ckpt / "ema.safetensors"))
        state = read_json(ckpt / "state.json")
        optimizer_from_flat(self.opt, load_weights(ckpt / "optimizer.safetensors"), state["optimizer"])
        rng = load_weights(ckpt / "rng.safetensors")
        self.gen.set_state(rng["generator"])
        torch.set_rng_state(rng["torch_global"])
        self.step = int(state["step"])
        return True

    # --- the loop --------------------------------------------------------------------------------

    def train_step(self) -> tuple[float, float]:
        cfg, data = self.cfg, self.data
        idx = batch_indices(len(data), cfg.batch_size, cfg.seed, self.step)
        x0 = data.x[idx]
        if x0.ndim == 4 and cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        cond = self._labels(idx)
        lr = lr_at(cfg, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.denoiser.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = diffusion_loss(self.denoiser, x0, cond, loss=cfg.loss, weighting=cfg.weighting,
                                  snr_gamma=cfg.snr_gamma, generator=self.gen).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss.item()} at step {self.step + 1}. The last good checkpoint in "
                f"{self.run_dir / 'checkpoints'} is kept. Try a lower --lr (now {cfg.lr}), "
                f"--grad-clip 1.0, --no-bf16, or check the data for NaN values")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), cfg.grad_clip)
        self.opt.step()
        ema_update(self.ema, self.denoiser, self.step, cfg.ema_decay)
        self.step += 1
        return loss.item(), float(grad_norm)

    def _labels(self, idx: torch.Tensor) -> torch.Tensor | None:
        num_classes = self.num_classes
        if num_classes is None:
            return None
        labels = self.data.labels[idx].clone()
        # Label dropout to the null class (Ho & Salimans 2022) so one model serves CFG.
        drop = torch.rand(len(idx), generator=self.gen) < self.cfg.label_dropout
        labels[drop] = num_classes
        return labels

    def fit(self, progress: bool = True, on_log=None) -> None:
        cfg = self.cfg
        write_json(self.run_dir / "config.json", self.run_config())
        log_path = self.run_dir / "log.jsonl"
        start_step, t0 = self.step, time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, desc="train",
                   unit="step", dynamic_ncols=True)
        window_t, window = time.perf_counter(), []
        while self.step < cfg.steps:
            if cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes:
                self.save()
                break
            try:
                loss, grad_norm = self.train_step()
            except NonFiniteLossError:
                bar.close()  # end the progress line, so the error message starts on its own line
                raise
            window.append(loss)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                now = time.perf_counter()
                rate = len(window) * cfg.batch_size / (now - window_t)
                loss = sum(window) / len(window)  # the mean since the last record, less noisy
                record = {"step": self.step, "loss": loss, "lr": lr_at(cfg, self.step - 1),
                          "grad_norm": grad_norm, "images_per_s": rate,
                          "elapsed_s": now - t0}
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
                window_t, window = now, []
                if on_log is not None:
                    on_log(self, record)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.steps:
                paused = time.perf_counter()
                self.write_samples(f"step-{self.step:08d}")
                window_t += time.perf_counter() - paused  # images/s counts training time only
        bar.close()
        if self.step == start_step:
            self.save()
        self.write_samples("final")

    def pipeline(self):
        from .pipeline import Pipeline

        return Pipeline(self.ema, tuple(self.data.x.shape[1:]), self.num_classes,
                        self.data.class_names, self.run_dir)

    def write_samples(self, tag: str) -> Path:
        """A grid of EMA samples (one column per class for conditional models) under samples/."""
        from .viz import plot_points, save_grid

        cfg, pipe = self.cfg, self.pipeline()
        n = cfg.num_samples
        labels = None if self.num_classes is None else torch.arange(n) % self.num_classes
        x = pipe.sample(n, sampler=cfg.sampler, steps=cfg.sample_steps, seed=cfg.seed,
                        class_labels=labels, guidance=cfg.guidance if labels is not None else 1.0)
        path = self.run_dir / "samples" / f"{tag}.png"
        if x.ndim == 4:
            save_grid(x, path, nrow=self.num_classes or None)
        else:
            plot_points(x, path, reference=self.data.x[:n])
        return path
