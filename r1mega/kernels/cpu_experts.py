"""Decoding on a multi-core CPU: routed experts spread over the cores instead of one GEMM at a time.

On CPU `F.grouped_mm` runs one GEMM per expert, one after another, and a decoding step gives each
expert a handful of rows: GEMMs that small run on one core whatever the intra-op thread count
(measured on an AMD EPYC: equal times with 1 and 2 threads in fp32), so the other cores idle while the hit
experts' weights stream through one. Inside `experts_over_cores()` the engine runs with one
intra-op thread, and each grouped GEMM is cut into one contiguous run of experts per core (about
equal weight reads each); the calling thread takes the first run and a pool of single-threaded
workers the others (torch releases the GIL inside the op). Every expert's GEMM is the same call on
the same rows, so results are bitwise those of one grouped_mm run single-threaded (multi-threaded
BLAS may round differently). Why one intra-op thread meanwhile: an OpenMP team's threads keep
spinning after each parallel op, and beside extra workers they take the cores away (measured:
both engines 2x slower).

Where the BLAS itself splits such small GEMMs over its threads, spreading the experts gains nothing
and costs the rest of the step its other cores: MKL on an Intel CPU does (`spreading_pays`).
"""
from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

# Used when a decoding step gives each local expert at most this many rows on average. Measured on
# the DeepSeek-V3 proxy (bench/decode_throughput.py, 2 cores, 8 sequences x top-6): 64 and 256
# experts (0.75 / 0.19 rows): fp32 1.45x / 1.47x of transformers with it, ~1.2x without; 8 experts
# (6 rows): bf16 1.01x with it, 1.16x without (one intra-op thread slows the rest of the step more
# than spreading the experts gains).
SPREAD_EXPERTS_BELOW_ROWS = 2.0

# None: spread where it pays (`spreading_pays`); True / False: always / never (tests, other CPUs)
SPREAD: bool | None = None

# one pool per worker count, never shut down: a generate call in another thread may still be
# submitting to a pool when this one enters with a different thread count
_pools: dict[int, ThreadPoolExecutor] = {}
_active = 0  # worker count while inside experts_over_cores(); 0 outside
_lock = threading.Lock()


def _workers(n: int) -> ThreadPoolExecutor:
    with _lock:
        if n not in _pools:
            # torch.set_num_threads in a worker also changes the default later threads start with;
            # experts_over_cores() sets it back for the process when it ends
            _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="r1mega-experts",
                                           initializer=torch.set_num_threads, initargs=(1,))
        return _pools[n]


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id ("GenuineIntel", "AuthenticAMD"), "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=None)
def blas_threads_small_gemms() -> bool:
    """Whether the CPU BLAS splits a decoding step's GEMMs (a few rows x 512 x 256) over its intra-op
    threads. MKL on an Intel CPU does, fp32 (MKL) and bf16 (oneDNN) alike: on a 2-core Xeon each of
    the two threads ran about half of such a GEMM's CPU time, and r1mega's decode with the experts
    spread (the rest of the step on one thread) ran at 0.74x-0.98x of transformers' (every op on both
    threads; 64 experts, fp32). On an AMD EPYC the same GEMMs took as long on 2 threads as on 1, and
    there the spreading gave 1.45x of transformers against ~1.2x without."""
    return torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel"


def spreading_pays(device: torch.device) -> bool:
    """Whether a decoding step should run inside `experts_over_cores` (SPREAD overrides the guess)."""
    if device.type != "cpu":
        return False
    return SPREAD if SPREAD is not None else not blas_threads_small_gemms()


def decoding_spreads(model, rows: int, device: torch.device) -> bool:
    """Whether decoding `rows` rows of `model` should run inside `experts_over_cores`: a model with
    routed experts giving each local expert few rows a step (GEMV-like), where spreading pays."""
    per_expert = getattr(model, "routed_rows_per_expert", lambda b: None)(rows)
    return per_expert is not None and per_expert <= SPREAD_EXPERTS_BELOW_ROWS and spreading_pays(device)


@contextlib.contextmanager
def experts_over_cores(device: torch.device):
    """Within the block (inference on CPU with several intra-op threads), grouped GEMMs of
    `grouped_mm_over_cores` use every core; elsewhere nothing changes."""
    global _active
    from r1mega.kernels import batch_invariant  # (linear.py imports this module)

    threads = torch.get_num_threads()
    # rl.exact_rollouts: the sampler keeps the trainer's thread count (it changes fp32 GEMM bits)
    if device.type != "cpu" or threads < 2 or _active or batch_invariant.enabled():
        yield
        return
    _workers(threads)
    torch.set_num_threads(1)
    _active = threads
    try:
        yield
    finally:
        _active = 0
        torch.set_num_threads(threads)


def usable(rows: torch.Tensor) -> bool:
    return _active > 1 and rows.device.type == "cpu" and not torch.is_grad_enabled()


def split_runs(ends: list[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous expert runs [e0, e1) holding rows, of about equal cost each. With a few rows per
    expert a GEMM's time is reading that expert's weight, so an expert with rows costs 1, plus a
    little per row (1/8: rows matter once an expert gets several)."""
    cost, before = [], 0
    for end in ends:
        rows, before = end - before, end
        cost.append((1.0 + rows / 8.0) if rows else 0.0)
    total = sum(cost)
    runs, start, acc = [], 0, 0.0
    for p in range(1, parts + 1):
        stop = start
        while stop < len(ends) and (p == parts or acc + cost[stop] <= total * p / parts + 1e-9):
            acc += cost[stop]
            stop += 1
        if stop > start and any(cost[start:stop]):
            runs.append((start, stop))
        start = stop
    return runs


def grouped_mm_over_cores(rows: torch.Tensor, weight_t: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """rows [N, K] grouped by expert, weight_t [E, K, M], offsets [E] int32 cumulative -> [N, M]."""
    ends = offsets.tolist()  # a CPU tensor: nothing to wait for
    workers = _active  # read once: another thread's generate may leave the block meanwhile
    if workers < 2:
        return F.grouped_mm(rows, weight_t, offs=offsets)
    pool = _workers(workers)
    runs = split_runs(ends, workers)
    if len(runs) < 2:
        return F.grouped_mm(rows, weight_t, offs=offsets)

    # grad and inference mode are per thread: the workers take the caller's (usable() means no grad),
    # else they would record autograd graphs and refuse inference tensors
    inference = torch.is_inference_mode_enabled()

    def run(e0: int, e1: int) -> torch.Tensor:
        first = ends[e0 - 1] if e0 else 0
        with torch.no_grad(), torch.inference_mode(inference):
            return F.grouped_mm(rows[first:ends[e1 - 1]], weight_t[e0:e1], offs=offsets[e0:e1] - first)

    futures = [pool.submit(run, e0, e1) for e0, e1 in runs[1:]]
    first = run(*runs[0])  # the calling thread takes a share too
    return torch.cat([first] + [f.result() for f in futures])
