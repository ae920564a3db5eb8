"""`r1mega reject-sample`: sample, keep what is correct and readable, write SFT data (R1 stage 3).

    r1mega reject-sample --model CKPT --prompts P.jsonl --out DIR --samples 16 --keep 4 \\
        [--max-tokens N --no-require-format --language en --max-paragraph-chars N]
    r1mega reject-sample --samples-from GEN_DIR --prompts P.jsonl --out DIR   # filter `r1mega generate` output

Samples go through `r1mega generate`'s resumable store (<out>/samples, with each sample's token ids),
then the filters of `filters.py` in order, then per-problem dedup and a quota of `--keep`. Kept
samples are written to <out>/sft.jsonl as {"messages": [..., {"role": "assistant", "content":
response}], "id", "sample", "prompt_ids", "completion_ids", "tokenizer"}, the chat format `r1mega sft`
reads (data.paths=[<out>/sft.jsonl]); SFT with the same tokenizer (its `fingerprint()` equals
"tokenizer") trains the sampled completion_ids exactly as the model wrote them (re-encoding the text
can give other tokens: a sampled "▁A" becomes "A"); another tokenizer (a distillation student's)
trains the text. A stop string can end inside the last sampled token: the text ends with the stop
string (as vLLM's does), the ids keep the whole token as sampled. Samples filtered
from a store without ids (--samples-from an older run) are written as text only.
<out>/report.json has the counts.
Prints kept/total and the count per rejection reason; the last line is
`kept=<n> total=<n> problems_with_kept=<n> problems=<n>` (the problems sampled), then
` dropped_long_prompts=<n>` when --drop-long-prompts skipped some (never sampled, in no other count).

--out is a new or empty directory, or one an earlier `r1mega reject-sample` made: then its samples
resume (finished problems skipped; same settings and the same prompt file required) and its own
sft.jsonl and report.json are rewritten (a warning names filter options changed since the last run;
report.json records them). A directory r1mega did not make, or one in use, is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections import Counter

from r1mega.atomic_io import write_jsonl_atomic, write_text_atomic
from r1mega.data.jsonl import DataError
from r1mega.errors import ConfigError
from r1mega.generation.filters import REASONS, FilterConfig, judge_sample, normalized
from r1mega.generation.records import chat_messages, question_digest, read_prompt_records
from r1mega.generation.store import response_text
from r1mega.judge import FALLBACKS, LANGUAGES


def add_args(p: argparse.ArgumentParser) -> None:
    from r1mega.generation.run import add_model_args, add_sampling_args

    add_model_args(p)
    p.add_argument("--prompts", required=True, help="prompt JSONL: id, prompt or messages, answer or tests")
    p.add_argument("--out", required=True, help="directory: samples/, sft.jsonl, report.json; new or empty, or one "
                   "an earlier `r1mega reject-sample` made (resumed); anything else is refused")
    p.add_argument("--samples-from", default=None, help="filter the samples of this `r1mega generate` "
                   "directory instead of generating")
    p.add_argument("--keep", type=int, default=4, help="at most this many samples kept per problem")
    p.add_argument("--max-tokens", type=int, default=0, help="reject completions longer than this (0: no cap)")
    p.add_argument("--no-require-format", dest="require_format", action="store_false",
                   help="do not require <think> ... </think> then an answer")
    p.add_argument("--language", default="en", choices=LANGUAGES, help="target language of the chain of thought")
    p.add_argument("--min-language-share", type=float, default=0.95)
    p.add_argument("--max-paragraph-chars", type=int, default=3000)
    p.add_argument("--allow-code-in-cot", action="store_true")
    p.add_argument("--answer-fallback", default="auto", choices=FALLBACKS,
                   help="final answer without <answer>/\\boxed (r1mega/judge/answers.py)")
    add_sampling_args(p, samples=16, temperature=0.6, top_p=0.95)


def filter_config(args: argparse.Namespace) -> FilterConfig:
    """The filter flags, checked."""
    share = args.min_language_share
    if not (math.isfinite(share) and 0 <= share <= 1):
        raise ConfigError("--min-language-share", f"must be in [0, 1], got {share}")
    if args.max_paragraph_chars < 1:
        raise ConfigError("--max-paragraph-chars", f"must be >= 1, got {args.max_paragraph_chars}")
    if args.max_tokens < 0:
        raise ConfigError("--max-tokens", f"must be >= 0 (0: no cap), got {args.max_tokens}")
    if args.language not in LANGUAGES:
        raise ConfigError("--language", f"expected one of {LANGUAGES}, got {args.language!r}")
    return FilterConfig(args.max_tokens, args.require_format, args.language, args.min_language_share,
                        args.max_paragraph_chars, args.allow_code_in_cot, args.answer_fallback)


def select(records: list[dict], samples: dict[str, list[dict]], cfg: FilterConfig, keep: int
           ) -> tuple[list[dict], Counter]:
    """(SFT records of the kept samples, counts: 'kept', each rejection reason, 'over_quota')."""
    counts: Counter = Counter()
    out = []
    for rec in records:
        seen, kept = set(), 0
        for s in sorted(samples.get(rec["id"], []), key=lambda s: s["sample"]):
            reason = judge_sample(rec, s, cfg)
            if reason is None and normalized(response_text(s)) in seen:
                reason = "duplicate"
            if reason is None and kept >= keep:
                reason = "over_quota"
            if reason is not None:
                counts[reason] += 1
                continue
            seen.add(normalized(response_text(s)))
            kept += 1
            counts["kept"] += 1
            row = {"messages": chat_messages(rec) + [{"role": "assistant", "content": response_text(s)}],
                   "id": rec["id"], "sample": s["sample"]}
            if s.get("completion_ids"):  # the tokens as sampled (SFT trains exactly these)
                row.update(prompt_ids=s["prompt_ids"], completion_ids=s["completion_ids"], tokenizer=s.get("tokenizer"))
            out.append(row)
    return out, counts


def read_samples(out_dir: str) -> dict[str, list[dict]]:
    from r1mega.generation.store import SampleStore, read_shard

    if not os.path.isdir(out_dir):
        raise DataError(f"{out_dir}: no such directory of samples (made by `r1mega generate`)")
    paths = SampleStore.shard_paths(out_dir)
    if not paths:
        raise DataError(f"{out_dir}: no shard-*.jsonl samples (made by `r1mega generate`)")
    by_id: dict[str, list[dict]] = {}
    for path in paths:
        for r in read_shard(path)[0]:  # each line checked: id, sample, completion
            by_id.setdefault(str(r["id"]), []).append(r)
    return by_id


def _dropped_ids(meta: dict) -> set[str]:
    """The ids of the prompts a generate run dropped for their length, from its meta.json."""
    return {str(i) for i in meta.get("dropped_long_prompts", [])}


def dropped_prompts(gen_dir: str) -> set[str]:
    """`_dropped_ids` of the generate run into `gen_dir` (none when its meta.json does not read)."""
    try:
        with open(os.path.join(gen_dir, "meta.json"), encoding="utf-8") as f:
            return _dropped_ids(json.load(f))
    except (OSError, ValueError, AttributeError, TypeError):  # check_finished names a bad --samples-from
        return set()


def check_finished(gen_dir: str, samples: dict[str, list[dict]], records: list[dict]) -> None:
    """--samples-from must name a finished `r1mega generate` run: its lock gone (a running or killed
    run leaves it), no torn shard, every prompt of --prompts with all k samples (or recorded in its
    meta.json as dropped for its length). Filtering a partial store would write an sft.jsonl and
    report that look complete."""
    from r1mega.generation.store import SampleStore, read_shard
    from r1mega.output_dir import LOCK

    advice = "let it finish, or rerun the same `r1mega generate` command to complete it, then filter"
    lock = os.path.join(gen_dir, LOCK)
    if os.path.exists(lock):
        try:
            with open(lock, encoding="utf-8") as f:
                who = f"pid {json.load(f)['pid']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "its writer"
        raise DataError(f"--samples-from {gen_dir}: not finished ({lock} of {who} remains: the generate run is "
                        f"still going or was interrupted); {advice}")
    for path in SampleStore.shard_paths(gen_dir):
        if read_shard(path)[1]:
            raise DataError(f"--samples-from {path}: ends in a torn line (an interrupted write); {advice}")
    try:
        with open(os.path.join(gen_dir, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        k = meta["samples"]
        dropped = _dropped_ids(meta)
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"--samples-from {gen_dir}: no readable meta.json with 'samples' (not an "
                        f"`r1mega generate` directory?)") from None
    # ids are line numbers unless given: another file's questions must not meet these samples
    other = [r for r in records if samples.get(r["id"]) and samples[r["id"]][0].get("question_digest")
             not in (None, question_digest(r))]
    if other:
        r = other[0]
        raise DataError(f"{r['where']}: problem {r['id']!r} asks another question than the one its samples in "
                        f"--samples-from {gen_dir} answer" + (f" ({len(other)} problems differ)" if len(other) > 1
                                                              else "")
                        + "; pass the prompt file that generate run sampled")
    short = [r["id"] for r in records if 0 < len(samples.get(r["id"], [])) < k]
    if short:
        raise DataError(f"--samples-from {gen_dir}: {len(short)} problems have fewer than their {k} samples "
                        f"(first: {short[0]!r}); {advice}")
    # a run stopped by Ctrl-C or an exception releases its lock and leaves whole problems only: the
    # prompts it never reached are the sign (those it dropped for their length are recorded)
    missing = [r["id"] for r in records if r["id"] not in samples and r["id"] not in dropped]
    if missing:
        raise DataError(f"--samples-from {gen_dir}: {len(missing)} of {len(records)} prompts of --prompts have no "
                        f"samples there (first: {missing[0]!r}): the generate run stopped before them or was made "
                        f"from other prompts; {advice}")


def _warn_if_filters_changed(report_path: str, filters: dict) -> None:
    """A rerun with other filter options rewrites sft.jsonl from the same stored samples: say so,
    naming what changed (the samples stay; the old selection is one rerun with the old options away)."""
    try:
        with open(report_path, encoding="utf-8") as f:
            before = json.load(f).get("filters")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(before, dict) and before != filters:
        changed = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in filters.items() if before.get(k) != v)
        print(f"warning: {report_path}: the filters changed since the last run ({changed}); "
              f"sft.jsonl and report.json are rewritten from the stored samples", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from r1mega.generation.run import finish, open_model, sample_to_store, sampling_params

    from r1mega.generation.run import file_sha256
    from r1mega.output_dir import claim_on_rank0

    if args.keep < 1:
        raise ConfigError("--keep", f"must be >= 1, got {args.keep}")
    cfg = filter_config(args)
    if args.samples_from and args.model:
        raise ConfigError("--samples-from", "filters samples already made; --model would generate new ones: "
                          "pass one of them")
    records = read_prompt_records(args.prompts)
    if any(r.get("answer") is None and r.get("tests") is not None for r in records):  # judged in the sandbox
        from r1mega.sandbox.isolation import NO_OPT_OUT_HINT, require_isolation

        require_isolation(NO_OPT_OUT_HINT)  # refused before any sampling, by name
    params = None if args.samples_from else sampling_params(args)
    if args.samples_from:
        samples = read_samples(args.samples_from)
        check_finished(args.samples_from, samples, records)
        if os.path.abspath(args.samples_from) == os.path.abspath(args.out):
            raise ConfigError("--out", "is the --samples-from directory; write the SFT data elsewhere")
    claim_on_rank0(args.out, "reject-sample")  # before the model loads; held until the command ends
    distributed = owns_group = False
    if not args.samples_from:
        loaded, distributed, owns_group = open_model(args)
        sample_to_store(loaded, records, os.path.join(args.out, "samples"), params, args.template,
                        args.problems_per_round, {"prompts": args.prompts, "prompts_sha256": file_sha256(args.prompts)},
                        desc="reject-sample", command="reject-sample", keep_ids=True,
                        explicit_max_new=args.max_new_tokens is not None, drop_long=args.drop_long_prompts)
        if loaded.ps.rank != 0:
            finish(distributed, owns_group)
            return 0
        samples = read_samples(os.path.join(args.out, "samples"))
    # prompts --drop-long-prompts skipped were never sampled: counted apart, not as problems with none kept
    dropped = dropped_prompts(args.samples_from or os.path.join(args.out, "samples"))
    records = [r for r in records if r["id"] not in dropped]
    rows, counts = select(records, samples, cfg, args.keep)
    total = sum(len(samples.get(r["id"], [])) for r in records)
    write_jsonl_atomic(os.path.join(args.out, "sft.jsonl"), rows)
    problems_kept = len({r["id"] for r in rows})
    report = {"kept": counts["kept"], "total": total, "problems": len(records), "problems_with_kept": problems_kept,
              **({"dropped_long_prompts": len(dropped)} if dropped else {}),
              "rejected": {k: counts[k] for k in (*REASONS, "over_quota") if counts[k]},
              "filters": {"keep": args.keep, **dataclasses.asdict(cfg)}}
    _warn_if_filters_changed(os.path.join(args.out, "report.json"), report["filters"])
    write_text_atomic(os.path.join(args.out, "report.json"), json.dumps(report, indent=1))
    print(f"kept {counts['kept']}/{total} samples ({problems_kept}/{len(records)} problems) -> "
          f"{os.path.join(args.out, 'sft.jsonl')}", flush=True)
    for reason, n in report["rejected"].items():
        print(f"  rejected {reason}: {n}", flush=True)
    print(f"kept={counts['kept']} total={total} problems_with_kept={problems_kept} problems={len(records)}"
          + (f" dropped_long_prompts={len(dropped)}" if dropped else ""), flush=True)
    finish(distributed, owns_group)
    return 0
