"""`r1mega generate`: k samples per prompt from a model, as sharded JSONL that resumes after a crash.

    r1mega generate --model CKPT_OR_HF_DIR --prompts P.jsonl --out DIR --samples 16 \\
        [--temperature 0.6 --top-p 0.95 --max-new-tokens N --template r1 --stop STR]
    torchrun --nproc_per_node 4 -m r1mega.cli generate ... --tp 2 --ep 2

--out is a new or empty directory, or one an earlier `r1mega generate` made: then the problems
already complete in it are skipped and the rest generated (a resume; the sampling settings must be
the same). A non-empty directory r1mega did not make, or one in use by another command, is refused
(see `r1mega/output_dir.py` and `store.py`). A progress bar shows problems done
and generated tokens/s; the last line is `problems=<n> samples=<n> tokens=<n> tokens_per_s=<float>`.
The same machinery serves `r1mega eval` and `r1mega reject-sample`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from dataclasses import replace
from typing import Optional

import torch.distributed as dist

from r1mega.config import MIN_TEMPERATURE, ParallelConfig
from r1mega.data.prompts import encode_prompt
from r1mega.data.tokenizer import check_fits, load_tokenizer
from r1mega.errors import ConfigError, DataError, OutputError, R1MegaError
from r1mega.generation.sampling_rounds import (LEGACY_NOISE_KEY, NOISE_KEY, NOISE_KEYS, SamplingParams,
                                               generate_rounds)
from r1mega.generation.model_source import LoadedModel, load_model, store_weights_digest
from r1mega.generation.records import TEMPLATES, question_digest, render_prompt, template_stops
from r1mega.generation.store import SampleStore
from r1mega.parallel.layout import join_ranks


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and layout")
    g.add_argument("--model", required=False, help="r1mega checkpoint (step dir, checkpoints root, run dir) or HF dir")
    g.add_argument("--config", default=None, help="YAML with the model shapes (when the checkpoint lacks them) "
                   "and data.tokenizer / data.synthetic")
    g.add_argument("--tokenizer", default=None, help="tokenizer.json / dir / sentencepiece .model")
    g.add_argument("--tp", type=int, default=1)
    g.add_argument("--pp", type=int, default=1)
    g.add_argument("--ep", type=int, default=1)
    g.add_argument("--etp", type=int, default=None, help="expert tensor parallel size (default: tp)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    g.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.cache_dir=runs/data")


def add_sampling_args(p: argparse.ArgumentParser, samples: int = 1, temperature: float = 0.6,
                      top_p: float = 0.95) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--samples", type=int, default=samples, help="samples per problem (k)")
    g.add_argument("--temperature", type=float, default=temperature)
    g.add_argument("--top-p", type=float, default=top_p)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"cap on generated tokens (default: what the model's positions leave after the longest "
                        f"prompt, at most {DEFAULT_MAX_NEW}); a larger value than the model allows is refused")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable); EOS always stops")
    g.add_argument("--template", default="r1", choices=TEMPLATES)
    g.add_argument("--problems-per-round", type=int, default=8,
                   help="problems generated together (x samples rows per round, split over DP)")
    g.add_argument("--speculative", default=None, choices=["mtp"],
                   help="self-speculative decoding: the model's own MTP module drafts, the model verifies "
                        "(same distribution; greedy output unchanged)")
    g.add_argument("--draft-tokens", type=int, default=1, help="drafts per row and step (--speculative)")
    g.add_argument("--compile-decode", action="store_true",
                   help="decoding steps of few rows (a long tail) as one compiled graph (torch.compile; one "
                        "process; compiles once, minutes on a small CPU, then cached): samples equal the eager "
                        "step's within float rounding, not bitwise")
    g.add_argument("--drop-long-prompts", action="store_true",
                   help="skip prompts that do not fit the model's positions (counted) instead of refusing")


def add_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--prompts", required=True, help="prompt JSONL: id, prompt or messages, answer/tests")
    p.add_argument("--out", required=True, help="output directory: new or empty, or one an earlier `r1mega generate` "
                   "made (resumed: finished problems skipped, same settings required); anything else is refused")
    p.add_argument("--shard-records", type=int, default=100_000, help="samples per output shard")
    add_sampling_args(p)


DEFAULT_MAX_NEW = 32768


def _need(cond: bool, flag: str, msg: str) -> None:
    if not cond:
        raise ConfigError(flag, msg)


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The sampling flags, checked (before any model is loaded): finite numbers in range."""
    t, p = args.temperature, args.top_p
    _need(math.isfinite(t) and (t == 0 or t >= MIN_TEMPERATURE), "--temperature",
          f"must be a finite number >= 0 (0 is greedy; else >= {MIN_TEMPERATURE:g}: a smaller one overflows logits / T), "
          f"got {t}")
    _need(math.isfinite(p) and 0 < p <= 1, "--top-p", f"must be in (0, 1], got {p}")
    _need(args.top_k >= 0, "--top-k", f"must be >= 0 (0 = off), got {args.top_k}")
    _need(args.samples >= 1, "--samples", f"must be >= 1, got {args.samples}")
    _need(0 <= args.seed < 2 ** 64, "--seed", f"must be >= 0 and < 2^64 (a larger one is the same seed mod 2^64), "
          f"got {args.seed}")
    _need(args.problems_per_round >= 1, "--problems-per-round", f"must be >= 1, got {args.problems_per_round}")
    if args.max_new_tokens is not None:
        _need(args.max_new_tokens >= 1, "--max-new-tokens", f"must be >= 1, got {args.max_new_tokens}")
    for s in args.stop:
        _need(s != "", "--stop", "an empty stop string would end every sample at its first token")
    stops = list(dict.fromkeys([*args.stop, *template_stops(args.template)]))  # each once, in the order given
    params = SamplingParams(args.samples, t, p, args.top_k, args.max_new_tokens or DEFAULT_MAX_NEW,
                            args.seed, stops, args.speculative, args.draft_tokens, args.compile_decode)
    params.check()
    return params


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    return h.hexdigest()


def prompt_digest(ids: list[int]) -> str:
    """A short digest of the prompt tokens a problem's samples are drawn from (what a resume compares)."""
    return hashlib.blake2b(",".join(map(str, ids)).encode(), digest_size=8).hexdigest()


def fit_context(records: list[dict], encoded: list[list[int]], params: SamplingParams, positions: int,
                explicit_max_new: bool, drop_long: bool, desc: str, announce: bool = True
                ) -> tuple[list[dict], list[list[int]]]:
    """Prompts and the new-token cap within the model's positions: a prompt that leaves no room is
    named (or dropped, counted, with --drop-long-prompts); --max-new-tokens beyond what the longest
    prompt leaves is refused; left unset, it becomes what is left (at most DEFAULT_MAX_NEW)."""
    long = [i for i, ids in enumerate(encoded) if len(ids) >= positions]
    if long and not drop_long:
        i = long[0]
        raise DataError(f"{records[i].get('where', 'prompt')}: prompt {records[i]['id']!r} has {len(encoded[i])} "
                        f"tokens but the model has {positions} positions (max_position_embeddings)"
                        + (f"; {len(long)} prompts are too long" if len(long) > 1 else "")
                        + "; shorten them, or pass --drop-long-prompts to skip them")
    if long:
        if announce:
            print(f"{desc}: dropped {len(long)} of {len(records)} prompts longer than the model's {positions} "
                  f"positions (--drop-long-prompts)", flush=True)
        skipped = set(long)
        keep = [i for i in range(len(records)) if i not in skipped]
        if not keep:
            raise DataError(f"every prompt is longer than the model's {positions} positions")
        records, encoded = [records[i] for i in keep], [encoded[i] for i in keep]
    room = positions - max(len(ids) for ids in encoded)
    if explicit_max_new:
        _need(params.max_new_tokens <= room, "--max-new-tokens",
              f"{params.max_new_tokens} new tokens after the longest prompt ({positions - room} tokens) exceed "
              f"the model's {positions} positions; at most {room}")
    else:
        params.max_new_tokens = min(params.max_new_tokens, room)
    return records, encoded


def resumed_cap(out: str, records: list[dict], encoded: list[list[int]], params: SamplingParams, positions: int) -> None:
    """Without --max-new-tokens the cap is what the longest prompt leaves, so it moves with the prompt file: a
    rerun into `out` keeps the cap its samples were drawn with while every prompt fits under it (one set of
    samples, one setting), and otherwise names the prompt that leaves too little room."""
    try:
        with open(os.path.join(out, "meta.json"), encoding="utf-8") as f:
            old = json.load(f)["sampling"]["max_new_tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # a new directory, or one the store refuses by name
    if not isinstance(old, int) or isinstance(old, bool) or old == params.max_new_tokens:
        return
    longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
    room = positions - len(encoded[longest])
    if old <= room:
        params.max_new_tokens = old
        return
    r = records[longest]
    raise ConfigError("--max-new-tokens", f"{r.get('where', 'prompt')}: prompt {r['id']!r} ({len(encoded[longest])} "
                      f"tokens) leaves {room} of the model's {positions} positions, fewer than the {old} new tokens "
                      f"{out}'s samples were drawn with (unset, the cap is what the longest prompt leaves); use "
                      f"another --out, or shorten that prompt")


def open_model(args: argparse.Namespace) -> tuple[LoadedModel, bool, bool]:
    if not args.model:
        raise ConfigError("--model", "required to generate (`r1mega eval --completions C.jsonl` scores existing ones)")
    distributed, owns_group, world = join_ranks()
    par = ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp)
    loaded = load_model(args.model, par, world, distributed, args.config, args.overrides, args.tokenizer,
                        args.dtype)
    return loaded, distributed, owns_group


def _broadcast(obj, ps):
    if ps.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sample_to_store(loaded: LoadedModel, records: list[dict], out: str, params: SamplingParams, template: str,
                    problems_per_round: int, meta: dict, shard_records: int = 100_000,
                    desc: str = "generate", keep_ids: bool = False, command: str = "generate", key: str = "--out",
                    explicit_max_new: bool = True, drop_long: bool = False) -> Optional[dict]:
    """Generate the problems not yet complete in `out`. Collective. Returns stats on rank 0.
    keep_ids: each record also holds its prompt_ids and completion_ids (what SFT trains on).
    Every rank checks the prompts against the model (same records, same verdict) before the store opens."""
    ps = loaded.ps
    tok = load_tokenizer(loaded.tokenizer, "--tokenizer")
    try:
        tok.add_model_eos(loaded.source)  # a --tokenizer from elsewhere has not the model's generation_config.json
    except ValueError as e:
        raise ConfigError("--model", str(e)) from None
    check_fits(tok, loaded.cfg.active_model.vocab_size)
    if params.speculative:
        from r1mega.inference.speculative import check_draft_model

        check_draft_model(loaded.cfg.active_model, "--speculative")
        if loaded.kept_init and ps.rank == 0:  # the draft may be one of them: samples stay exact, drafts poor
            print(f"{desc}: note: {loaded.source} lacks {len(loaded.kept_init)} tensors (e.g. "
                  f"{loaded.kept_init[0]}; transformers saves DeepSeek without its MTP layer); they start from the "
                  f"seeded init, so --speculative drafts with an untrained layer and few drafts are accepted",
                  flush=True)
    rendered_all = [render_prompt(r, template, tok) for r in records]
    given = records
    records, encoded = fit_context(records, [encode_prompt(tok, text, template) for text, _ in rendered_all],
                                   params, loaded.cfg.active_model.max_position_embeddings, explicit_max_new,
                                   drop_long, desc, announce=ps.rank == 0)
    digests = {r["id"]: prompt_digest(ids) for r, ids in zip(records, encoded)}
    questions = {r["id"]: question_digest(r) for r in records}
    kept = {r["id"] for r in records}
    # what --drop-long-prompts skipped, so a reader of the store tells a dropped prompt from an unfinished one
    dropped = [r["id"] for r in given if r["id"] not in kept]
    store, todo, error, noise_key = None, None, None, None
    if ps.rank == 0:
        try:
            if not explicit_max_new:
                resumed_cap(out, records, encoded, params, loaded.cfg.active_model.max_position_embeddings)
            store = SampleStore(out, params.samples, {**meta, "template": template, "model": loaded.source,
                                                      "dtype": loaded.dtype, "weights": store_weights_digest(loaded.source, out),
                                                      "sampling": params.recorded(), "noise_key": NOISE_KEY,
                                                      "dropped_long_prompts": dropped},
                                shard_records, command, key)
            # a directory drawn before the key was recorded keeps the scheme it was drawn with
            noise_key = store.meta.get("noise_key", LEGACY_NOISE_KEY)
            if noise_key not in NOISE_KEYS:
                store.close()
                raise OutputError(f"{os.path.join(out, 'meta.json')}: unknown noise_key {noise_key!r} "
                                  f"(known: {sorted(NOISE_KEYS)}); use another {key}")
        except R1MegaError as e:  # told to every rank, so none waits for the others forever
            error = str(e)
        else:
            # a finished problem keeps its samples only while its prompt is the one they were drawn from
            changed = [r for r in records if r["id"] in store.done
                       and store.prompt_digests.get(r["id"], digests[r["id"]]) != digests[r["id"]]]
            if changed:
                store.close()
                r = changed[0]
                error = (f"{r.get('where', r['id'])}: the prompt of {r['id']!r} changed since {out} sampled it"
                         + (f" ({len(changed)} prompts changed)" if len(changed) > 1 else "")
                         + f"; its samples are of the old text. Use another {key}, or restore the prompt")
            else:
                todo = [i for i, r in enumerate(records) if r["id"] not in store.done]
                if store.repaired:
                    print(f"{desc}: dropped {store.repaired} samples of unfinished problems (crash recovery)",
                          flush=True)
                if len(todo) < len(records):
                    print(f"{desc}: resuming, {len(records) - len(todo)} of {len(records)} problems already done",
                          flush=True)
    todo, error, noise_key, cap = _broadcast((todo, error, noise_key, params.max_new_tokens), ps)
    if error:
        raise R1MegaError(f"{desc}: {error}")
    params = replace(params, noise_key=noise_key, max_new_tokens=cap)
    problems = [records[i] for i in todo]
    rendered = [render_prompt(r, template, tok) for r in problems]
    prompts = [text for text, _ in rendered]
    prefix = {r["id"]: pre for r, (_, pre) in zip(problems, rendered)}
    bar = None
    if ps.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=desc, dynamic_ncols=True)
    tokens, t0 = 0, time.perf_counter()
    vocab_hash = tok.fingerprint() if keep_ids and ps.rank == 0 else None  # which tokenizer the ids are of
    try:
        for results, stats in generate_rounds(loaded.chunks, ps, tok, problems, prompts, params,
                                              max(1, problems_per_round), template=template):
            if results is None:
                continue
            store.write([(prob["id"], [{"id": prob["id"], "sample": s.index, "completion": s.completion,
                                        "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
                                        "finish_reason": s.finish_reason, "prompt_digest": digests[prob["id"]],
                                        "question_digest": questions[prob["id"]],
                                        **({"response_prefix": prefix[prob["id"]]} if prefix[prob["id"]] else {}),
                                        **({"prompt_ids": s.prompt_ids, "completion_ids": s.completion_ids,
                                            "tokenizer": vocab_hash} if keep_ids else {})}
                                       for s in samples])
                         for prob, samples in results])
            tokens += stats["completion_tokens"]
            bar.update(len(results))
            bar.set_postfix({"tok/s": f"{tokens / (time.perf_counter() - t0):.1f}"})
    finally:  # the bar ends before any error is printed, so the error is the last line
        if bar is not None:
            bar.close()
    if ps.rank != 0:
        return None
    store.close()
    dt = time.perf_counter() - t0
    return {"problems": len(records), "generated_problems": len(todo), "samples": params.samples,
            "tokens": tokens, "tokens_per_s": tokens / dt if dt > 0 else 0.0, "store": store}


def finish(distributed: bool, owns_group: bool) -> None:
    if distributed and owns_group:
        dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    from r1mega.generation.records import read_prompt_records
    from r1mega.output_dir import check

    records = read_prompt_records(args.prompts)
    params = sampling_params(args)
    _need(args.shard_records >= 1, "--shard-records", f"must be >= 1, got {args.shard_records}")
    check(args.out, "generate")  # a foreign --out is refused before the model loads (rank 0 claims it later)
    loaded, distributed, owns_group = open_model(args)
    stats = sample_to_store(loaded, records, args.out, params, args.template,
                            args.problems_per_round, {"prompts": args.prompts}, args.shard_records,
                            explicit_max_new=args.max_new_tokens is not None, drop_long=args.drop_long_prompts)
    if stats is not None:
        print(f"problems={stats['problems']} samples={stats['samples']} tokens={stats['tokens']} "
              f"tokens_per_s={stats['tokens_per_s']:.2f}", flush=True)
    finish(distributed, owns_group)
    return 0
