"""The training loop: AdamW with warm-up, gradient clipping, EMA, bf16 autocast, atomic checkpoints
and exact resume.

Everything random in a step comes from state saved in the checkpoint: the batch order is a
function of (seed, epoch), the levels t, noise and label dropout come from one torch.Generator
whose state is saved, and dropout inside the network uses torch's global RNG, also saved. So on
CPU a run stopped and resumed produces the same weights as one that never stopped.

Under torchrun (``torchrun --nproc_per_node N -m undiffuse train ...``) the same loop runs as
DistributedDataParallel, arranged so the result does not depend on N:

* ``batch_size`` is the global batch; each of the N processes trains on a contiguous 1/N of it;
* every process draws the label dropout, levels t and noise of the *whole* global batch from
  the shared generator and keeps its share, so the generator state is the same on every process
  and equal to a single-process run's: a checkpoint resumes with any number of processes;
* each process's loss is the mean over its share and DDP averages the gradients, so the gradient
  is the single-process one (up to float rounding); clipping, AdamW and EMA then run identically
  everywhere;
* rank 0 alone writes config.json, log.jsonl, checkpoints (the plain module's weights) and grids.

Network dropout is the exception: each process drops units of its own share with its own RNG
(see ``Trainer.train_step``), so with dropout a run is reproducible for a given N, not across N.

What differs between kinds of run is the objective's (``undiffuse.objectives``): the model, the
random numbers of a batch after the condition's dropout (Gaussian: t and the noise; cold, Bansal et
al. 2022: the severities t and the degradation's state), the loss and the preview grids. The
condition is ``undiffuse.conditioning``'s: label dropout for class-conditional runs, caption dropout
for text runs (``--text``; the caption embeddings are ``undiffuse.text.objective``'s).
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .checkpoint import latest_checkpoint, recover_checkpoints, save_checkpoint, write_json
from .checks import check_data_fits
from .compiling import call_or_fall_back, compile_net
from .config import TrainConfig
from .data import TensorData, load_dataset
from .conditioning import training_condition
from .nets import net_config
from .objectives import objective_for
from .rundir import append_log, check_resumable, check_run_dir, clear_run
from .run_files import load_checked, read_training_state, restore_optimizer
from .train_parts import _rank_seed, batch_indices, ema_update, lr_at  # noqa: F401 (re-exported)
from .text.objective import CaptionEmbedder, caption_embedder


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    """Owns the model, EMA, optimizer and RNG for one run directory."""

    def __init__(self, cfg: TrainConfig, data: TensorData | None = None, encoder=None, *,
                 overwrite: bool = False):
        """``encoder``: for a text run, a text encoder object to use instead of ``cfg.text_encoder``.
        ``fit`` refuses a ``cfg.out`` that holds a run unless ``resume`` was called first (continue
        it) or ``overwrite`` is true (delete it and start over): see ``undiffuse.rundir``."""
        # Checked, with the process-dependent defaults (loss, sampler) filled in: what the run saves.
        self.cfg = cfg = cfg.resolved()
        self.objective = objective_for(cfg)
        self.run_dir = Path(cfg.out)
        self.device = distributed.resolve_device(cfg.device)
        world = distributed.world_size()
        if cfg.batch_size % world:
            up = -(-cfg.batch_size // world) * world
            raise ValueError(f"batch_size {cfg.batch_size} does not split over {world} processes: "
                             f"it is the global batch, shared equally; use a multiple of {world} "
                             f"(e.g. --batch-size {up}) or a number of processes that divides it")
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        if data is None:
            with distributed.main_first():  # one process fills a download cache, then the rest
                data = load_dataset(
                    cfg.data, image_size=cfg.image_size, channels=cfg.channels,
                    on_bad_image=cfg.on_bad_image, labels_from_subfolders=cfg.labels_from_subfolders,
                    **({"captions": True, "on_missing_caption": cfg.on_missing_caption,
                        "caption_column": cfg.caption_column} if cfg.text else {}))
        check_data_fits(cfg, data)  # before any network is built or step taken
        self.data = data = self.objective.training_data(data)  # latent runs: the latents
        self.text: CaptionEmbedder | None = None  # a text run's captions, embedded up front
        if cfg.text:
            with distributed.main_first():  # one process fills the caption cache, then the rest
                self.text = caption_embedder(cfg, data, encoder)
        context_dim = None if self.text is None else self.text.encoder.dim
        self.denoiser = self.objective.build(self.data, context_dim).to(self.device)
        self.process = self.objective.process(self.denoiser)
        self.condition = training_condition(self.num_classes, data.labels, cfg.label_dropout, self.text,
                                            cfg.caption_dropout)
        self.ema = copy.deepcopy(self.denoiser).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.denoiser.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        # CPU generator on every device: its state (in checkpoints) means the same everywhere.
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.overwrite = overwrite
        self._continuing = False  # may write into the run already in cfg.out (resume, or fit began)
        self._saved_step: int | None = None  # the step of the newest good checkpoint, if any
        # What runs the forward pass: under torchrun a DDP wrapper that averages the gradients
        # over processes in backward. It shares the denoiser's parameters, so the optimizer, EMA
        # and checkpoints keep using the plain module (no "module." prefix in saved weights).
        self.model: torch.nn.Module = self.denoiser
        # Compiled in place after the EMA copy (which stays eager): parameter names do not change.
        self._compile_pending = cfg.compile and compile_net(self.denoiser.net)
        if distributed.is_distributed():
            self.model = DistributedDataParallel(
                self.denoiser, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.denoiser.net, "num_classes", None)

    # --- persistence ---------------------------------------------------------------------------

    def run_config(self) -> dict:
        return {"train": asdict(self.cfg), "net": net_config(self.denoiser.net),
                "process": self.process.config(),
                "denoiser": self.objective.model_config(self.denoiser),
                "data": {"name": self.data.name, "shape": list(self.data.x.shape[1:]),
                         "num_classes": self.num_classes,
                         "class_names": self.data.class_names},
                "text": None if self.text is None else self.text.config(),
                "machine": distributed.machine(self.device), **self.objective.extra_config()}

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; the others hold the same state); returns its folder on
        rank 0, None elsewhere. Every process must call it: they wait until it is complete."""
        path = None
        if distributed.is_main():
            rng = {"generator": self.gen.get_state(), "torch_global": torch.get_rng_state()}
            if self.device.type == "cuda":  # dropout on a GPU draws from the GPU's generator
                rng["torch_cuda"] = torch.cuda.get_rng_state(self.device)
            path = save_checkpoint(self.run_dir, self.step, self.denoiser, self.ema, self.opt, rng,
                                   {"time": time.time()})
        distributed.barrier()  # nobody reads or replaces a checkpoint rank 0 is still writing
        self._saved_step = self.step
        return path

    def _on_main(self, work) -> None:
        """``work()`` on rank 0 alone; an error there is raised on every rank, none left waiting."""
        error = None
        if distributed.is_main():
            try:
                work()
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                error = e
        if distributed.any_rank(error is not None):  # also a barrier: rank 0's work is done
            raise error or RuntimeError(f"rank 0 could not prepare {self.run_dir}; see its error")

    def _recover(self) -> None:
        check_run_dir(self.run_dir, resume=True, overwrite=self.overwrite)
        for note in recover_checkpoints(self.run_dir):
            warnings.warn(note, RuntimeWarning, stacklevel=4)

    def resume(self) -> bool:
        """Load the newest checkpoint; True when resumed. First puts back in place what an
        interrupted save left (``recover_checkpoints``); with no checkpoint (no run yet, or one
        stopped before its first), warns that training starts from step 0 and returns False."""
        self._on_main(self._recover)
        self._continuing = True
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            if distributed.is_main():
                warnings.warn(f"--resume: nothing to resume in {self.run_dir} (no checkpoint there yet); "
                              "training starts from step 0", RuntimeWarning, stacklevel=2)
            return False
        check_resumable(self.run_dir, self.cfg, self.denoiser.net)
        load_checked(self.denoiser, ckpt / "model.safetensors")
        load_checked(self.ema, ckpt / "ema.safetensors")
        state, rng = read_training_state(ckpt)
        restore_optimizer(self.opt, ckpt, state["optimizer"])
        self.gen.set_state(rng["generator"])
        torch.set_rng_state(rng["torch_global"])
        if "torch_cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["torch_cuda"], self.device)
        self.step = self._saved_step = int(state["step"])
        return True

    # --- the loop --------------------------------------------------------------------------------

    def train_step(self) -> tuple[float, float]:
        """One optimisation step; returns the loss (mean over the global batch) and the
        gradient norm before clipping."""
        cfg, data, dev, b = self.cfg, self.data, self.device, self.cfg.batch_size
        idx = batch_indices(len(data), b, cfg.seed, self.step)
        # The random numbers of the whole global batch, in the single-process order (the label or
        # caption dropout, then the objective's: t and the noise, or t and a degradation's state),
        # on every process; each keeps its share. Drawing only a share would leave the generator in
        # a state that depends on the number of processes.
        dropped = self.condition.draw(idx, self.gen)
        draws = self.objective.draw(self.denoiser, b, (b, *data.x.shape[1:]), self.gen, data.x.dtype)
        mine = distributed.shard(b)  # everything with one process
        x0 = data.x[idx[mine]].to(dev)
        if x0.ndim == 4 and cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        cond = self.condition.share(dropped, idx, mine, dev)
        draws = {k: _share(v, mine, dev) for k, v in draws.items()}
        if distributed.rank() > 0:
            # Network dropout draws from torch's global RNG. Rank 0 keeps the stream that
            # checkpoints save; the others reseed from (seed, step, rank) each step, so their
            # masks differ from rank 0's and a resumed run replays them exactly.
            torch.manual_seed(_rank_seed(cfg.seed, self.step, distributed.rank()))
        lr = lr_at(cfg, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        loss = self.objective.loss(self.model, self.denoiser, x0, cond, draws).mean()
        # The global mean: it is what gets logged, and every process must reach the same verdict
        # (one that stopped alone would leave the others waiting in backward's all-reduce).
        global_loss = distributed.all_reduce_mean(loss.detach())
        if not torch.isfinite(global_loss):
            raise NonFiniteLossError(self._divergence_message(global_loss.item()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients arrive averaged over processes: identical everywhere
        grad_norm = torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), cfg.grad_clip)
        self.opt.step()
        ema_update(self.ema, self.denoiser, self.step, cfg.ema_decay)
        self.step += 1
        return global_loss.item(), float(grad_norm)

    def _divergence_message(self, loss: float) -> str:
        cfg = self.cfg
        if self._saved_step is None:
            kept = (f"No checkpoint was written before it (the first was due at step "
                    f"{min(cfg.checkpoint_every, cfg.max_train_steps)}), so nothing of this run is kept")
        else:
            kept = (f"The last good checkpoint, step {self._saved_step} in {self.run_dir / 'checkpoints'}, "
                    "is kept")
        return (f"loss became {loss} at step {self.step + 1}. {kept}. Try a lower --lr (now {cfg.lr}), "
                "--grad-clip 1.0, --no-bf16, or check the data for NaN values; changed settings need a new "
                "run (another --out, or --overwrite to replace this one)")

    def _step_or_fall_back(self) -> tuple[float, float]:
        """``train_step``; the first compiled one, if compilation fails, is redone eagerly with the
        same random numbers (nothing else has changed yet: the failure comes before opt.step)."""
        if not self._compile_pending:
            return self.train_step()
        states = (self.gen.get_state(), torch.get_rng_state())
        result = call_or_fall_back(self.train_step, self.denoiser.net, "training", keep=(NonFiniteLossError,),
                                   undo=lambda: (self.gen.set_state(states[0]), torch.set_rng_state(states[1])))
        self._compile_pending = False
        return result

    def fit(self, progress: bool = True, on_log=None) -> None:
        """Train to cfg.max_train_steps. Under torchrun every process calls it; rank 0 writes the files.
        Refuses a cfg.out that holds a run unless ``resume`` came first or ``overwrite`` is set."""
        cfg = self.cfg
        main = distributed.is_main()
        self._on_main(self._claim_run_dir)
        self._continuing, self.overwrite = True, False  # once: a second fit continues this run
        if main and distributed.is_distributed():
            w = distributed.world_size()
            print(f"DDP: {w} processes ({distributed.backend()}, {self.device.type}), "
                  f"{cfg.batch_size // w} images per process, global batch {cfg.batch_size}", flush=True)
        log_path = self.run_dir / "log.jsonl"
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.max_train_steps, initial=self.step, disable=not (progress and main), desc="train",
                   unit="step", dynamic_ncols=True)
        window_t, window = time.perf_counter(), []
        while self.step < cfg.max_train_steps:
            # Decided together: a process stopping alone would leave the others waiting.
            if cfg.max_minutes is not None and distributed.any_rank(
                    time.perf_counter() - t0 > 60 * cfg.max_minutes):
                if self.step != self._saved_step:
                    self.save()
                break
            try:
                loss, grad_norm = self._step_or_fall_back()
            except NonFiniteLossError:
                bar.close()  # end the progress line, so the error message starts on its own line
                raise
            window.append(loss)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_train_steps:
                now = time.perf_counter()
                rate = len(window) * cfg.batch_size / (now - window_t)
                loss = sum(window) / len(window)  # the mean since the last record, less noisy
                record = {"step": self.step, "loss": loss, "lr": lr_at(cfg, self.step - 1),
                          "grad_norm": grad_norm, "images_per_s": rate,
                          "elapsed_s": now - t0}
                if main:
                    append_log(log_path, record)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
                window_t, window = now, []
                if on_log is not None:
                    on_log(self, record)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_train_steps:
                self.save()
            if main and cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.max_train_steps:
                paused = time.perf_counter()
                self.write_samples(f"step-{self.step:08d}")
                window_t += time.perf_counter() - paused  # images/s counts training time only
        bar.close()
        if self.step != self._saved_step:  # a safety net: every way out of the loop saves
            self.save()
        if main:
            self.write_samples("final")

    def _claim_run_dir(self) -> None:
        """Check cfg.out (``check_run_dir``; --overwrite deletes the old run), then write config.json."""
        check_run_dir(self.run_dir, resume=self._continuing, overwrite=self.overwrite)
        if self.overwrite:
            clear_run(self.run_dir)
        write_json(self.run_dir / "config.json", self.run_config())
        self.objective.prepare(self.run_dir, self.data, self.denoiser)

    def pipeline(self):
        """The EMA model as a pipeline of the run's kind (on the CPU: a GPU-trained EMA is copied)."""
        ema = self.ema if self.device.type == "cpu" else copy.deepcopy(self.ema).cpu()
        text = None if self.text is None else self.text.config()
        return self.objective.pipeline(ema, tuple(self.data.x.shape[1:]), self.num_classes, self.data.class_names,
                                       self.run_dir, text, None if self.text is None else self.text.encoder)

    def write_samples(self, tag: str) -> Path:
        """The objective's preview grids of the EMA model under samples/; returns the main picture."""
        return self.objective.write_samples(self, tag)


def _share(v, mine, device):
    """This process's share of a global-batch draw: a tensor, a dict of them (a degradation's
    state) or None."""
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: _share(x, mine, device) for k, x in v.items()}
    return v[mine].to(device)
