"""Code that runs inside spawned ranks for the trainer tests."""
from __future__ import annotations

import os
import signal

from r1mega.config import Config, DataConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig, validate
from r1mega.models.deepseek_v3.hf_weights import gather_full
from r1mega.parallel.layout import build_parallel_state, single_process_state
from r1mega.train.lm_step import lm_forward_backward
from r1mega.train.optimizer import DistributedAdamW
from r1mega.train.setup import build_chunks, init_weights
from r1mega.train.trainer import train

# large enough that Adam's m / (sqrt(v) + eps) does not magnify float noise of near-zero gradients
EPS = 1e-4
DEEP = dict(num_layers=8, first_k_dense_replace=1, num_mtp_layers=1, vocab_size=128)


def schedule_cfg(par: dict, virtual: int, schedule: str, world: int) -> Config:
    cfg = Config(model=ModelConfig(**DEEP), parallel=ParallelConfig(**par),
                 train=TrainConfig(schedule=schedule, virtual_stages=virtual))
    return validate(cfg, world)


def grads_under(rank: int, world: int, par: dict, virtual: int, schedule: str, ids, labels, micro: int) -> dict:
    cfg = schedule_cfg(par, virtual, schedule, world)
    ps = build_parallel_state(cfg.parallel) if world > 1 else single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=7)
    res = lm_forward_backward(chunks, ps, ids, labels, micro, {"mtp_weight": 0.3}, schedule=schedule)
    out = {"loss": res.loss, "mtp_loss": res.extra["mtp_loss"], "max_in_flight": res.schedule.max_in_flight, "grads": {}}
    for chunk in chunks:
        g = gather_full(chunk, grads=True)
        if ps.r("dp") == 0 and ps.r("tp") == 0:
            out["grads"].update(g)
    return out


def schedules_worker(rank: int, world: int, cases: list, ids, labels, micro: int) -> list:
    return [grads_under(rank, world, *case, ids, labels, micro) for case in cases]


def optimizer_worker(rank: int, world: int, steps: int, ids, labels) -> dict:
    cfg = validate(Config(model=ModelConfig(vocab_size=128), parallel=ParallelConfig()), world)
    ps = build_parallel_state(cfg.parallel) if world > 1 else single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=3)
    opt = DistributedAdamW(chunks, ps, OptimConfig(lr=1e-2, weight_decay=0.1, clip_grad=0.5, eps=EPS))
    for _ in range(steps):
        lm_forward_backward(chunks, ps, ids, labels, 1, {"mtp_weight": 0.0}, reduce_dp=False)
        opt.step(1e-2)
        opt.zero_grad(chunks)
    return {n: p.detach().clone() for n, p in chunks.named_parameters()}


def train_worker(rank: int, world: int, cfg_dict: dict) -> dict:
    cfg = Config(model=ModelConfig(**cfg_dict["model"]), parallel=ParallelConfig(**cfg_dict["parallel"]),
                 data=DataConfig(**cfg_dict["data"]), optim=OptimConfig(**cfg_dict.get("optim", {})),
                 train=TrainConfig(**cfg_dict["train"]), seed=cfg_dict.get("seed", 1234))
    out = train(cfg, cfg_dict.get("kind", "pretrain"))
    return {"losses": out["losses"], "skipped": out["skipped"]}


def crash_during_save_worker(rank: int, world: int, cfg_dict: dict) -> dict:
    """Train, and get killed (SIGKILL) while the second checkpoint is being written."""
    import r1mega.train.checkpoint as ckpt

    real_save_file = ckpt.save_file
    calls = {"n": 0}

    def dying_save_file(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the first save went through; die in the middle of the second
            real_save_file(dict(list(tensors.items())[:3]), path, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the write
        return real_save_file(tensors, path, *a, **k)

    ckpt.save_file = dying_save_file
    return train_worker(rank, world, cfg_dict)
