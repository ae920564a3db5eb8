"""`r1mega eval`: benchmarks scored the way DeepSeek-R1 reports them.

    r1mega eval --model CKPT_OR_HF_DIR --data aime.jsonl math500.jsonl --samples 64 [--greedy]
    torchrun --nproc_per_node 4 -m r1mega.cli eval ... --tp 2 --ep 2
    r1mega eval --data D.jsonl --completions C.jsonl     # score completions made by another engine

Benchmarks are JSONL records with `id`, `prompt` (or `messages`) and `answer` (or `tests` for
code). k samples per problem at temperature 0.6, top-p 0.95 (the paper's setting) go through
`r1mega generate`'s resumable store under <out>/<benchmark>/samples. Every sample is judged by
r1mega.judge, as the RL rewards and the rejection filters judge it: the final answer after the thought
(last <answer>, else last \\boxed{...}, else --answer-fallback: by default the text after the last
"A:", else the last number) against the reference with math-verify; code problems run the last Python
block after the thought against their tests in the sandbox. With --samples 64 the table reports
pass@1, pass@k and cons@64 (majority vote over the 64 answers), as DeepSeek-R1 does. Per benchmark it
writes <out>/<benchmark>/scored.jsonl (one line per sample) and summary.json (with k, temperature and
top-p); <out>/summary.md and summary.json hold the table of all. The last line is
`pass@1=<float> cons@<k>=<float> problems=<n> samples=<k> temperature=<t> top_p=<p>` over all problems
(for --completions made elsewhere, pass the --temperature and --top-p they were sampled with: without
them the summaries and the last line name no sampling setting).

--out is a new or empty directory, or one an earlier `r1mega eval` made: then each benchmark's
samples resume (finished problems skipped) when the settings and the benchmark file are the same;
a benchmark file whose content changed (e.g. new answers) is refused rather than scored against
the old samples. A directory r1mega did not make, or one in use by another command, is refused.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

from r1mega.atomic_io import write_text_atomic
from r1mega.data.jsonl import DataError, iter_jsonl
from r1mega.errors import ConfigError
from r1mega.eval.metrics import ProblemScore, equivalent, score_problem, summarize
from r1mega.generation.records import read_prompt_records
from r1mega.judge import FALLBACKS, choices, final_code, is_correct


TOTAL = "all"  # the summary table's row over every benchmark (with more than one)
PAPER_SAMPLING = {"temperature": 0.6, "top_p": 0.95}  # DeepSeek-R1's evaluation setting


def add_args(p: argparse.ArgumentParser) -> None:
    from r1mega.generation.run import add_model_args, add_sampling_args

    p.add_argument("--data", nargs="+", required=True, help="benchmark JSONL file(s): id, prompt, answer")
    p.add_argument("--completions", default=None,
                   help="score these completions ({id, completion} per sample) instead of generating")
    p.add_argument("--out", default="runs/eval", help="directory for samples, scores and summaries: new or empty, "
                   "or one an earlier `r1mega eval` made (resumed); anything else is refused")
    p.add_argument("--greedy", action="store_true", help="also report greedy (temperature 0) accuracy")
    p.add_argument("--answer-fallback", default="auto", choices=FALLBACKS,
                   help="final answer without <answer>/\\boxed: auto (\"A:\" line, else last number), "
                        "a_colon, last_number, none")
    add_model_args(p)
    add_sampling_args(p, samples=4)
    # unset: the paper's setting when sampling here; with --completions what they were sampled with is
    # unknown unless stated, and the summaries say nothing rather than a default nobody sampled at
    p.set_defaults(temperature=None, top_p=None)


def is_code(rec: dict) -> bool:
    """Judged by its tests (no reference answer)."""
    return rec.get("answer") is None and rec.get("tests") is not None


def judge(rec: dict, completion: str, fallback: str = "auto", programs=None) -> tuple[Optional[str], bool]:
    """(final answer -- the program for code problems --, correct) of one completion."""
    if is_code(rec):
        from r1mega.rl.rewards import code_reward

        code = final_code(completion)
        return code, code is not None and code_reward(completion, rec, programs) > 0
    return is_correct(completion, rec["answer"], fallback)


def score_benchmark(records: list[dict], completions: dict[str, list[str]], out_dir: Optional[str] = None,
                    fallback: str = "auto") -> tuple[dict, list[ProblemScore]]:
    """completions: id -> the k completions in sample order. Writes scored.jsonl when out_dir is given."""
    programs = None
    if any(is_code(r) for r in records):  # every program of the benchmark at once on the sandbox's pool
        from r1mega.rl.rewards import run_programs

        code = [(t, r) for r in records if is_code(r) for t in completions[r["id"]]]
        programs = run_programs([t for t, _ in code], [r for _, r in code])
    scores, lines = [], []
    for rec in records:
        texts = completions[rec["id"]]
        judged = [judge(rec, t, fallback, programs) for t in texts]
        same = ((lambda x, y: x == y) if is_code(rec) else choices.same_option
                if choices.reference_letter(str(rec["answer"])) is not None else equivalent)  # "(B) 12" votes with "B"
        scores.append(score_problem([c for _, c in judged], [a for a, _ in judged], same))
        lines.extend(json.dumps({"id": rec["id"], "sample": i, "answer": a, "correct": c, "completion": t},
                                ensure_ascii=False) + "\n" for i, ((a, c), t) in enumerate(zip(judged, texts)))
    if out_dir is not None:
        write_text_atomic(os.path.join(out_dir, "scored.jsonl"), "".join(lines))
    return summarize(scores), scores


def read_completions(path: str, records: list[dict]) -> dict[str, list[str]]:
    """{id: [completion, ...]} in file order; every record needs the same number of completions."""
    known = {r["id"] for r in records}
    out: dict[str, list[str]] = {}
    for where, rec in iter_jsonl(path):
        if not isinstance(rec.get("completion"), str) or "id" not in rec:
            raise DataError(f"{where}: expected {{\"id\", \"completion\"}} with a string completion")
        pid = str(rec["id"])
        if pid not in known:
            raise DataError(f"{where}: id {pid!r} is not in the benchmark")
        out.setdefault(pid, []).append(rec["completion"])
    missing = [r["id"] for r in records if r["id"] not in out]
    if missing:
        raise DataError(f"{path}: no completions for {len(missing)} problem(s), e.g. {missing[:3]}")
    counts = {len(v) for v in out.values()}
    if len(counts) != 1:
        few = min(out, key=lambda k: len(out[k]))
        raise DataError(f"{path}: problems have different sample counts {sorted(counts)} "
                        f"(e.g. {few!r} has {len(out[few])}); pass@k and cons@k need the same k for all")
    return out


def _store_completions(out_dir: str) -> dict[str, list[str]]:
    from r1mega.generation.store import SampleStore, read_shard, response_text

    by_id: dict[str, dict[int, str]] = {}
    for path in SampleStore.shard_paths(out_dir):
        for r in read_shard(path)[0]:
            by_id.setdefault(str(r["id"]), {})[r["sample"]] = response_text(r)
    return {pid: [s[i] for i in sorted(s)] for pid, s in by_id.items()}


def markdown_table(rows: dict[str, dict]) -> str:
    ks = sorted({k for s in rows.values() for k in s if k.startswith("pass@") and k != "pass@1"},
                key=lambda k: int(k[5:]))
    cons = sorted({k for s in rows.values() for k in s if k.startswith("cons@")}, key=lambda k: int(k[5:]))
    cols = ["problems", "samples", "temperature", "top_p", "pass@1", *ks, *cons, "greedy", "answer_rate"]
    cols = [c for c in cols if any(c in s for s in rows.values())]
    head = "| benchmark | " + " | ".join(cols) + " |\n|" + " --- |" * (len(cols) + 1) + "\n"
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return head + "".join(f"| {name} | " + " | ".join(fmt(s.get(c, "")) for c in cols) + " |\n"
                          for name, s in rows.items())


def benchmark_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def run(args: argparse.Namespace) -> int:
    from r1mega.generation.run import file_sha256, finish, open_model, sample_to_store, sampling_params
    from r1mega.output_dir import claim_on_rank0

    names = [benchmark_name(p) for p in args.data]
    if len(set(names)) != len(names):
        raise ConfigError("--data", f"two benchmarks share a file name {names}; their outputs would collide")
    if len(names) > 1 and TOTAL in names:  # the table's row over all benchmarks would replace its row
        raise ConfigError("--data", f"{args.data[names.index(TOTAL)]}: a benchmark named {TOTAL!r} collides with the "
                          f"table's total row over all benchmarks; rename the file")
    benchmarks = {n: read_prompt_records(p, need_answer=True) for n, p in zip(names, args.data)}
    if any(is_code(r) for recs in benchmarks.values() for r in recs):  # refused before any sampling, by name
        from r1mega.sandbox.isolation import NO_OPT_OUT_HINT, require_isolation

        require_isolation(NO_OPT_OUT_HINT)
    loaded = None
    distributed = owns_group = False
    if not args.completions:  # sampled here: unset flags take the paper's setting
        for key, value in PAPER_SAMPLING.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    # what the numbers were sampled with (for --completions: only what the flags state)
    sampling = {k: getattr(args, k) for k in PAPER_SAMPLING if getattr(args, k) is not None}
    if args.completions:
        if len(args.data) != 1:
            raise ConfigError("--completions", "scores one benchmark: pass a single --data file")
        if args.greedy or args.model:
            raise ConfigError("--completions", "scores given completions: --greedy and --model generate, drop them")
        texts = {names[0]: read_completions(args.completions, benchmarks[names[0]])}
        greedy_texts = {}
        claim_on_rank0(args.out, "eval")
    else:
        params = sampling_params(args)
        claim_on_rank0(args.out, "eval")  # before the model loads; held until the command ends
        loaded, distributed, owns_group = open_model(args)
        texts, greedy_texts = {}, {}
        explicit = args.max_new_tokens is not None
        for (name, recs), path in zip(benchmarks.items(), args.data):
            where = os.path.join(args.out, name)
            # samples are keyed by the benchmark file's content: new answers never meet old samples
            meta = {"prompts": name, "prompts_sha256": file_sha256(path)}
            sample_to_store(loaded, recs, os.path.join(where, "samples"), params, args.template,
                            args.problems_per_round, meta, desc=f"eval {name}", command="eval",
                            explicit_max_new=explicit, drop_long=args.drop_long_prompts)
            if args.greedy:
                greedy = sampling_params(args)
                greedy.samples, greedy.temperature = 1, 0.0
                sample_to_store(loaded, recs, os.path.join(where, "greedy"), greedy, args.template,
                                args.problems_per_round, meta, desc=f"greedy {name}", command="eval",
                                explicit_max_new=explicit, drop_long=args.drop_long_prompts)
            if loaded.ps.rank == 0:
                texts[name] = _store_completions(os.path.join(where, "samples"))
                if args.drop_long_prompts:  # the dropped problems are not scored (fit_context counted them)
                    benchmarks[name] = [r for r in recs if r["id"] in texts[name]]
                if args.greedy:
                    greedy_texts[name] = _store_completions(os.path.join(where, "greedy"))
        if loaded.ps.rank != 0:
            finish(distributed, owns_group)
            return 0
    table, everything = {}, []
    for name, recs in benchmarks.items():
        where = os.path.join(args.out, name)
        summary, scores = score_benchmark(recs, texts[name], where, args.answer_fallback)
        summary.update(sampling)
        if name in greedy_texts:
            g, _ = score_benchmark(recs, greedy_texts[name], fallback=args.answer_fallback)
            summary["greedy"] = g["pass@1"]
        write_text_atomic(os.path.join(where, "summary.json"), json.dumps(summary, indent=1) + "\n")
        write_text_atomic(os.path.join(where, "summary.md"), markdown_table({name: summary}))
        table[name] = summary
        everything.extend(scores)
        print(f"{name}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in summary.items()), flush=True)
    total = {**summarize(everything), **sampling}
    if len(table) > 1:
        table[TOTAL] = total
    md = markdown_table(table)
    write_text_atomic(os.path.join(args.out, "summary.md"), md)
    write_text_atomic(os.path.join(args.out, "summary.json"), json.dumps(table, indent=1) + "\n")
    print(md, end="", flush=True)
    k = total["samples"]
    print(f"pass@1={total['pass@1']:.4f} cons@{k}={total[f'cons@{k}']:.4f} problems={total['problems']} "
          f"samples={k}" + "".join(f" {key}={v}" for key, v in sampling.items()), flush=True)
    finish(distributed, owns_group)
    return 0
