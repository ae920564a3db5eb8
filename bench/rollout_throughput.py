"""Rollout throughput: the continuous-batching engine vs the static engine (and transformers).

    python bench/rollout_throughput.py [--workloads long_tail shared_prefix uniform] [--repeats 2]

long_tail      the tiny model (configs/tiny/pretrain.yaml shapes, random weights), 8 prompts x 8
               samples, T=1; a row stops at a length picked by its first sampled token from a
               long-tailed table (median ~40 tokens, one bucket in 32 never stops), the way a stop
               string ends most samples early. Run at --max-new-tokens 64 and 512: the time per
               generated token should barely move with the cap (the static engine's grows with it).
shared_prefix  16 samples vs 1 sample of one 4K-token prompt, 4 new tokens each, tiny model: the
               continuous engine prefills the prompt once for all samples.
layouts        the long-tail workload on TP2 x EP2 (4 ranks) and PP2 (groups in flight as configured,
               always split in two, or one flushed batch per step), beside one process: same
               samples, time per token.
pp_decode      continuous decoding under pipeline parallelism: --pp ranks (1 thread each, gloo)
               against one process, tiny model, --pp-rows rows (distinct 16-token prompts) each
               decoding --pp-new tokens (no stop): groups in flight as configured (>= 16 rows a
               group), always pp groups, and one flushed batch per step; tokens/s, same samples.
uniform        greedy, every row the same length: the DeepSeek-V3 proxy (bench/proxy.py, 64 experts)
               and a dense Qwen2 student, side by side with transformers' `generate` on the same
               weights (tokens must agree in float32).

Printed per run: useful (generated) tokens/s, peak cache bytes in use (continuous) vs the static
allocation, decode row-steps, and the ratios. Timings on a shared CPU are noisy: best of --repeats.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from r1mega.config import Config, ParallelConfig, load_config, validate  # noqa: E402
from r1mega.inference.generate import GenerationConfig, generate, generate_static  # noqa: E402
from r1mega.parallel.layout import build_parallel_state, single_process_state  # noqa: E402
from r1mega.parallel.spawn import run_ranks  # noqa: E402
from r1mega.train.setup import build_chunks, init_weights  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(max_positions: int = 8192, par: dict | None = None, world: int = 1):
    """The tiny model, random weights (seed 3), in one process or (inside spawned ranks) under `par`."""
    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "pretrain.yaml"), [])
    cfg.model.num_mtp_layers = 0
    cfg.model.max_position_embeddings = max_positions
    cfg = validate(Config(model=cfg.model, parallel=ParallelConfig(**(par or {}))), world)
    ps = build_parallel_state(cfg.parallel) if world > 1 else single_process_state()
    chunks = build_chunks(cfg, ps)
    init_weights(chunks, seed=3)
    return chunks.eval(), ps, cfg.model.vocab_size


def long_tail_lengths(seed: int = 0, buckets: int = 32, median: float = 40.0) -> list[int]:
    """Target length per first-token bucket: lognormal (median 40, sigma 0.9); bucket 0 never stops."""
    g = torch.Generator().manual_seed(seed)
    lengths = (median * torch.exp(0.9 * torch.randn(buckets, generator=g))).round().clamp(min=2).long().tolist()
    lengths[0] = 1 << 30
    return lengths


def timed(fn, repeats: int, cpu: bool = False):
    """Best of `repeats`: wall seconds, or with cpu=True (wall, this process's CPU seconds): on a CPU
    shared with other jobs the CPU time is the steadier measure of the work done (one thread)."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return ((best, best_cpu) if cpu else best), out


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def long_tail_rows(vocab: int):
    """The long-tail workload: 8 prompts x 8 samples, and the stop predicate (length by first token)."""
    table = long_tail_lengths()
    stop = lambda ids: len(ids) >= table[ids[0] % len(table)]  # noqa: E731
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (int(n),), generator=g).tolist()
               for n in torch.randint(8, 24, (8,), generator=g)]
    return [p for p in prompts for _ in range(8)], stop


def long_tail(args) -> None:
    chunks, ps, vocab = tiny_model()
    rows, stop = long_tail_rows(vocab)
    print("long_tail: tiny model, 8 prompts x 8 samples, T=1, long-tailed stops")
    print(f"{'cap':>4} {'engine':>10} {'tokens':>7} {'mean len':>8} {'s':>7} {'cpu s':>7} {'tok/s':>8} "
          f"{'ms/token':>9} {'cpu ms/tok':>10} {'row-steps':>10} {'steps':>6} {'cache MiB':>10}")
    per_token = {}
    for cap in args.caps:
        gen = GenerationConfig(max_new_tokens=cap, temperature=1.0, seed=1, stop=stop)
        for name, fn in (("continuous", generate), ("static", generate_static)):
            (dt, cpu), r = timed(lambda: fn(chunks, ps, rows, gen), args.repeats, cpu=True)
            n = int(r.completion_mask.sum())
            per_token[cap, name] = dt / n, cpu / n
            print(f"{cap:>4} {name:>10} {n:>7} {n / len(rows):>8.1f} {dt:>7.2f} {cpu:>7.2f} {n / dt:>8.1f} "
                  f"{1e3 * dt / n:>9.3f} {1e3 * cpu / n:>10.3f} {r.decode_row_steps:>10} {r.forwards:>6} "
                  f"{mib(r.cache_bytes):>10}")
    lo, hi = min(args.caps), max(args.caps)
    for name in ("continuous", "static"):
        wall, cpu = (per_token[hi, name][i] / per_token[lo, name][i] for i in (0, 1))
        print(f"  {name}: time per token at cap {hi} / at cap {lo} = {wall:.2f}x (CPU time: {cpu:.2f}x)")
    print(f"  continuous vs static at cap {hi}: {per_token[hi, 'static'][0] / per_token[hi, 'continuous'][0]:.2f}x "
          f"tokens/s (CPU time: {per_token[hi, 'static'][1] / per_token[hi, 'continuous'][1]:.2f}x)")


def _layout_worker(rank: int, world: int, par: dict, caps: list[int], repeats: int, gen_kw: dict, threads: int):
    """This DP rank's contiguous share of the long-tail rows under `par`: per cap, (wall s, CPU s,
    completions, forwards)."""
    torch.set_num_threads(threads)
    chunks, ps, vocab = tiny_model(par=par, world=world)
    rows, stop = long_tail_rows(vocab)
    lo, hi = ps.r("dp") * len(rows) // ps.dp, (ps.r("dp") + 1) * len(rows) // ps.dp
    keys = torch.arange(len(rows))[lo:hi]
    out = {}
    for cap in caps:
        gen = GenerationConfig(max_new_tokens=cap, temperature=1.0, seed=1, stop=stop, **gen_kw)
        (dt, cpu), r = timed(lambda: generate(chunks, ps, rows[lo:hi], gen, rows=keys), repeats, cpu=True)
        out[cap] = (dt, cpu, r.completions(), r.forwards)
    return {"keys": keys, "by_cap": out}


def layouts(args) -> None:
    """The long-tail workload on several ranks (this machine's cores shared by all of them): the
    same samples as one process, and the time per generated token."""
    chunks, ps, vocab = tiny_model()
    rows, stop = long_tail_rows(vocab)
    print(f"layouts: the long-tail workload (8 prompts x 8 samples, T=1), tiny model, {args.threads} thread(s) a rank")
    print(f"{'layout':>22} {'cap':>4} {'tokens':>7} {'s':>7} {'cpu s (sum)':>11} {'ms/token':>9} {'forwards':>8} "
          f"{'same samples':>12}")
    one = {}
    for cap in args.caps:
        gen = GenerationConfig(max_new_tokens=cap, temperature=1.0, seed=1, stop=stop)
        (dt, cpu), r = timed(lambda: generate(chunks, ps, rows, gen, rows=torch.arange(len(rows))), args.repeats,
                             cpu=True)
        one[cap] = r.completions()
        n = sum(map(len, one[cap]))
        print(f"{'1 process':>22} {cap:>4} {n:>7} {dt:>7.2f} {cpu:>11.2f} {1e3 * dt / n:>9.3f} {r.forwards:>8} "
              f"{'-':>12}")
    runs = {"tp2_ep2": (dict(tp=2, ep=2), 4, {}, "TP2 x EP2 (4 ranks)"),
            "pp2": (dict(pp=2), 2, {}, "PP2, groups >= 16 rows"),
            "pp2_split": (dict(pp=2), 2, dict(pipelined_min_rows=1), "PP2, 2 groups always"),
            "pp2_flushed": (dict(pp=2), 2, dict(pipelined_decode=False), "PP2, one batch/step")}
    for name in args.layouts:
        par, world, gen_kw, label = runs[name]
        per_rank = run_ranks(_layout_worker, world, par, args.caps, args.repeats, gen_kw, args.threads)
        for cap in args.caps:
            got = {}
            for r in per_rank:
                got.update(zip(r["keys"].tolist(), r["by_cap"][cap][2]))
            same = sum(got[k] == c for k, c in enumerate(one[cap]))
            n = sum(map(len, one[cap]))
            dt = max(r["by_cap"][cap][0] for r in per_rank)
            cpu = sum(r["by_cap"][cap][1] for r in per_rank)
            print(f"{label:>22} {cap:>4} {n:>7} {dt:>7.2f} {cpu:>11.2f} {1e3 * dt / n:>9.3f} "
                  f"{per_rank[-1]['by_cap'][cap][3]:>8} {same:>6}/{len(rows)}")


def _pp_rows(vocab: int, rows: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    return torch.randint(3, vocab, (rows, 16), generator=g).tolist()


def _pp_worker(rank: int, world: int, par: dict, rows: int, new: int, repeats: int, gen_kw: dict, threads: int):
    """Every row decoded under `par` (one DP replica): (wall s, this rank's CPU s, completions, forwards)."""
    torch.set_num_threads(threads)
    chunks, ps, vocab = tiny_model(par=par, world=world)
    gen = GenerationConfig(max_new_tokens=new, temperature=1.0, seed=1, **gen_kw)
    prompts = _pp_rows(vocab, rows)
    (dt, cpu), r = timed(lambda: generate(chunks, ps, prompts, gen, rows=torch.arange(rows)), repeats, cpu=True)
    return dt, cpu, r.completions(), r.forwards


def pp_decode(args) -> None:
    """PP decoding throughput: one process, then args.pp stages in flight / split / flushed."""
    load = os.getloadavg()
    print(f"pp_decode: tiny model, {args.pp_new} new tokens a row (no stop), T=1, PP{args.pp} ({args.pp} processes, "
          f"{args.threads} thread(s) each, gloo) vs 1 process; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'rows':>5} {'layout':>26} {'tokens':>7} {'s':>7} {'cpu s (sum)':>11} {'cpu s (max rank)':>16} "
          f"{'tok/s':>8} {'vs 1 process':>12} {'forwards':>8} {'same':>7}")
    chunks, ps, vocab = tiny_model()
    variants = (("groups >= 16 rows (default)", {}), ("pp groups always", dict(pipelined_min_rows=1)),
                ("one batch a step (flushed)", dict(pipelined_decode=False)))
    for rows in args.pp_rows:
        dt1, cpu1, ref, fw1 = _pp_worker(0, 1, {}, rows, args.pp_new, args.repeats, {}, args.threads)
        n = sum(map(len, ref))
        print(f"{rows:>5} {'1 process':>26} {n:>7} {dt1:>7.2f} {cpu1:>11.2f} {cpu1:>16.2f} {n / dt1:>8.1f} "
              f"{1.0:>12.2f} {fw1:>8} {'-':>7}")
        for label, kw in variants:
            per_rank = run_ranks(_pp_worker, args.pp, dict(pp=args.pp), rows, args.pp_new, args.repeats, kw,
                                 args.threads)
            dt = max(r[0] for r in per_rank)
            cpu = sum(r[1] for r in per_rank)
            same = sum(a == b for a, b in zip(per_rank[-1][2], ref))
            print(f"{rows:>5} {label:>26} {n:>7} {dt:>7.2f} {cpu:>11.2f} {max(r[1] for r in per_rank):>16.2f} "
                  f"{n / dt:>8.1f} {dt1 / dt:>12.2f} {per_rank[0][3]:>8} {same:>3}/{rows}")
    load = os.getloadavg()
    print(f"  load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def shared_prefix(args) -> None:
    chunks, ps, vocab = tiny_model()
    prompt = torch.randint(3, vocab, (args.prefix_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    print(f"shared_prefix: tiny model, one {len(prompt)}-token prompt, {args.prefix_new} new tokens per sample, T=1")
    print(f"{'engine':>10} {'samples':>7} {'s':>7} {'x one sample':>12} {'cache MiB':>10}")
    for name, fn in (("continuous", generate), ("static", generate_static))[:1 if args.skip_static else 2]:
        times = {}
        for k in (1, args.prefix_samples):
            gen = GenerationConfig(max_new_tokens=args.prefix_new, temperature=1.0, seed=1)
            times[k], r = timed(lambda: fn(chunks, ps, [prompt] * k, gen), args.repeats)
            print(f"{name:>10} {k:>7} {times[k]:>7.2f} {times[k] / times[1]:>12.2f} {mib(r.cache_bytes):>10}")


def dense_pair(device, dtype, vocab: int = 8192):
    """A Qwen2-shaped student (hidden 512, 4 layers, 8 heads / 2 KV heads) in transformers and r1mega."""
    import transformers

    from r1mega.config import DenseConfig
    from r1mega.models.dense.model import DenseStudent
    from r1mega.models.weights import load_hf_weights

    cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(cfg).float()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = DenseStudent(DenseConfig.from_hf(tmp), single_process_state())
        load_hf_weights(ours, tmp)
    return hf.to(device=device, dtype=dtype).eval(), ours.to(device=device, dtype=dtype).eval()


def uniform(args) -> None:
    from proxy import build_pair, hf_config  # noqa: F401

    ps = single_process_state()
    device = torch.device("cpu")
    shape = argparse.Namespace(experts=[64], topk=6, groups=8, topk_groups=4, layers=4, dense_layers=1, shared=1,
                               hidden=512, heads=8, ffn=1024, moe_ffn=256, vocab=args.uniform_vocab)
    sampled = args.uniform_temperature > 0
    how = f"T={args.uniform_temperature} top-p={args.uniform_top_p}" if sampled else "greedy"
    print(f"uniform: {how}, {args.uniform_batch} prompts x {args.uniform_prompt} tokens + {args.uniform_new} new, "
          f"vocabulary {args.uniform_vocab}, float32" + (" (sampled: 'same' compares nothing)" if sampled else ""))
    print(f"{'model':>14} {'transformers tok/s':>19} {'static tok/s':>13} {'continuous tok/s':>17} "
          f"{'vs transformers':>16} {'vs static':>10} {'same':>5}   CPU tok/s transformers / continuous (ratio)")
    pairs = (("MoE proxy", lambda: build_pair(shape, 64, torch.float32, device)),
             ("dense Qwen2", lambda: dense_pair(device, torch.float32, args.uniform_vocab)))
    for label, make in pairs:
        if label.split()[0].lower() not in args.uniform_models:
            continue
        hf, ours = make()
        hf.generation_config.eos_token_id = None
        g = torch.Generator().manual_seed(1)
        prompts = torch.randint(0, args.uniform_vocab, (args.uniform_batch, args.uniform_prompt), generator=g)
        n = args.uniform_batch * args.uniform_new
        gen = GenerationConfig(max_new_tokens=args.uniform_new, temperature=args.uniform_temperature,
                               top_p=args.uniform_top_p, seed=1)
        how_hf = (dict(do_sample=True, temperature=args.uniform_temperature, top_p=args.uniform_top_p, top_k=0)
                  if sampled else dict(do_sample=False))
        t, cpu = {}, {}  # best wall and best CPU (this process's: steadier on a shared machine) seconds
        for _ in range(args.repeats + 1):  # the first round warms up
            for name in ("transformers", "static", "continuous"):
                t0, c0 = time.perf_counter(), time.process_time()
                if name == "transformers":
                    ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.uniform_new,
                                      min_new_tokens=args.uniform_new, pad_token_id=0, eos_token_id=None,
                                      **how_hf)[:, prompts.shape[1]:]
                else:
                    fn = generate if name == "continuous" else generate_static
                    got = fn(ours, ps, prompts.tolist(), gen).tokens[:, prompts.shape[1]:]
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if _ > 0:
                    t[name] = min(t.get(name, math.inf), dt)
                    cpu[name] = min(cpu.get(name, math.inf), dc)
        same = int((got == ref).all(1).sum())
        print(f"{label:>14} {n / t['transformers']:>19.1f} {n / t['static']:>13.1f} {n / t['continuous']:>17.1f} "
              f"{t['transformers'] / t['continuous']:>16.2f} {t['static'] / t['continuous']:>10.2f} "
              f"{same:>2}/{args.uniform_batch}   {n / cpu['transformers']:.1f} / {n / cpu['continuous']:.1f} "
              f"({cpu['transformers'] / cpu['continuous']:.2f}x)")


def r1_estimate(args) -> None:
    """DeepSeek-R1's rollout shape on paper, with this engine's accounting (the tests check it on
    real runs: decode feeds each row len - 1 tokens; the cache holds a prompt's full blocks once and
    each live row's own blocks; MLA stores kv_lora_rank + rope values per token per layer)."""
    rows, groups, prompt, bs = 512, 32, 200, args.block_size
    g = torch.Generator().manual_seed(0)
    lengths = (2048 * torch.exp(args.r1_sigma * torch.randn(rows, generator=g))).round().clamp(1, 8192).long()
    per_token = (512 + 64) * 2 * 61  # bf16 latent + rope key, 61 layers
    static_steps = rows * int(lengths.max())
    live_steps = int((lengths - 1).sum())
    static_cache = rows * (prompt + 8192) * per_token
    t = torch.arange(int(lengths.max()))
    live = lengths[None, :] > t[:, None]  # [steps, rows]
    own = -(-(prompt % bs + t[:, None] + 1) // bs)  # each row's copy of the partial prompt block + its tokens
    in_use = groups * (prompt // bs) + (live * own).sum(1)  # blocks in use at each step
    peak = int(in_use.max()) * bs * per_token
    everything = int((lengths + prompt).sum()) * per_token
    print(f"r1_estimate: {rows} rows ({groups} prompts x {rows // groups}), {prompt}-token prompts, responses "
          f"lognormal median 2048 sigma {args.r1_sigma} capped 8192 (mean {lengths.float().mean():.0f}, "
          f"{int((lengths == 8192).sum())} at the cap); MLA cache {per_token} bytes/token (bf16, 61 layers)")
    print(f"  decode row-steps: static {static_steps:,}, continuous {live_steps:,} "
          f"({1 - live_steps / static_steps:.0%} of the static ones were for finished rows)")
    print(f"  cache: static allocation {static_cache / 2**30:.0f} GiB; every token of every row "
          f"{everything / 2**30:.0f} GiB; continuous peak in use {peak / 2**30:.0f} GiB (blocks of {bs}, "
          f"prompts shared, finished rows freed)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", default=["long_tail", "shared_prefix", "uniform"],
                   choices=["long_tail", "shared_prefix", "uniform", "r1_estimate", "layouts", "pp_decode"])
    p.add_argument("--pp", type=int, default=2, help="pp_decode: pipeline stages (one process each)")
    p.add_argument("--pp-rows", type=int, nargs="+", default=[16, 64], help="pp_decode: rows decoding at once")
    p.add_argument("--pp-new", type=int, default=64, help="pp_decode: new tokens a row")
    p.add_argument("--layouts", nargs="+", default=["tp2_ep2", "pp2", "pp2_split", "pp2_flushed"],
                   choices=["tp2_ep2", "pp2", "pp2_split", "pp2_flushed"], help="layouts workload: the layouts to run")
    p.add_argument("--caps", type=int, nargs="+", default=[64, 512], help="long_tail: max_new_tokens values")
    p.add_argument("--prefix-tokens", type=int, default=4052)
    p.add_argument("--prefix-samples", type=int, default=16)
    p.add_argument("--prefix-new", type=int, default=4)
    p.add_argument("--skip-static", action="store_true", help="shared_prefix: the continuous engine only (the static "
                   "one prefills the prompt once per sample: minutes at 4K x 16)")
    p.add_argument("--uniform-models", nargs="+", default=["moe", "dense"], choices=["moe", "dense"])
    p.add_argument("--uniform-batch", type=int, default=16)
    p.add_argument("--uniform-prompt", type=int, default=32)
    p.add_argument("--uniform-new", type=int, default=48)
    p.add_argument("--uniform-vocab", type=int, default=8192, help="uniform: vocabulary (151936: Qwen's)")
    p.add_argument("--uniform-temperature", type=float, default=0.0, help="uniform: 0 greedy, else sampled")
    p.add_argument("--uniform-top-p", type=float, default=1.0)
    p.add_argument("--r1-sigma", type=float, default=1.0, help="r1_estimate: lognormal sigma of response lengths")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats; the best is reported")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (on a loaded machine 2 threads spin-wait on each other: 100x slower)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads; a shared CPU: timings are noisy")
    for w in args.workloads:
        globals()[w](args)
        print()


if __name__ == "__main__":
    main()
