"""`r1mega pipeline`: the DeepSeek-R1 recipe end to end, one stage after another, each evaluated.

    r1mega pipeline --config configs/tiny/r1_pipeline.yaml [--nproc 4] [--out DIR] [--seed N]

Stage kinds (the config lists them in order; `from` names the stage whose weights a stage starts
from, `data` the stage whose kept samples an SFT stage trains on):
  pretrain       `r1mega pretrain` (the base model)
  grpo           `r1mega grpo` from the `from` stage's weights (R1-Zero, reasoning RL, alignment RL)
  reject_sample  `r1mega reject-sample` on the RL prompt split with the `from` stage's model
  sft            `r1mega sft` from the `from` stage's weights on the `data` stage's sft.jsonl
A stage may name its own `model_config`: distillation is a pretrained dense student (a config with
`student:`) fine-tuned on the teacher's rejection-sampled data. A stage that cannot run in this
checkout (a student without the dense model family) and the stages built on it are skipped with a note.
Every stage with weights is then scored by `r1mega eval` on the held-out split (k samples, the
config's `eval` settings) into <out>/eval/<protocol>/<stage>, one directory per evaluation protocol
(a rerun with other `eval` settings evaluates the finished stages anew). Each stage runs as its own
process (torchrun for --nproc > 1), logs to <out>/logs/<stage>.txt and writes <out>/<stage>/DONE when
finished, so a rerun skips finished stages and a crashed one resumes from its own checkpoints. At the end: a table of every stage's held-out pass@1 / cons@k (Markdown, JSON, PNG);
the last line is `stages=<n> final_stage=<name> pass@1=<float> cons@<k>=<float>`.

Every key and every stage's options (types, kinds, references, each stage's config overrides,
validated as its command would) are checked before the first stage runs. --out is a new or empty
directory, or one an earlier `r1mega pipeline` made (resumed); anything else, or a directory in
use by another pipeline, is refused. The pipeline removes only what it wrote.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Optional

from r1mega.atomic_io import write_text_atomic
from r1mega.config import ConfigError

KINDS = ("pretrain", "grpo", "reject_sample", "sft")
STAGE_KEYS = {"name", "kind", "from", "data", "model_config", "overrides", "samples", "keep", "require_format",
              "max_new_tokens"}
TOP_KEYS = {"model_config", "out", "rl_common", "sft_common", "eval", "stages"}
EVAL_KEYS = {"samples", "temperature", "top_p", "max_new_tokens", "template", "stop"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT_4 = ["parallel.tp=2", "parallel.ep=2"]  # --nproc 4: TP2 x EP2 (DP2), as the demo


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="pipeline YAML (configs/tiny/r1_pipeline.yaml)")
    p.add_argument("--out", default=None, help="run directory (default: the config's `out`): new or empty, or one an "
                   "earlier `r1mega pipeline` made (finished stages skipped); anything else is refused")
    p.add_argument("--nproc", type=int, default=1, help="ranks per stage (1, 2 = TP2, or 4 = TP2 x EP2)")
    p.add_argument("--seed", type=int, default=None, help="one seed for every stage: training (`seed=`: "
                   "initialization, data order, RL sampling) and sampling (`--seed` of reject-sample and eval); "
                   "default: each command's own. A run is deterministic per seed")


def load_pipeline(path: str) -> dict:
    """The YAML as plain data, checked: unknown keys, kinds and references are errors naming the key."""
    from omegaconf import OmegaConf

    if not os.path.exists(path):
        raise ConfigError("--config", f"file not found: {path}")
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:  # YAML syntax: the parser's message names line and column
        raise ConfigError("--config", f"{path}: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, dict):
        raise ConfigError("--config", f"{path}: expected a mapping of pipeline keys")
    for k in cfg:
        if k not in TOP_KEYS:
            raise ConfigError(k, f"unknown pipeline key; expected one of {sorted(TOP_KEYS)}")
    for k in ("model_config", "stages"):
        if k not in cfg:
            raise ConfigError(k, "missing")
    _typed(cfg, "model_config", str)
    _typed(cfg, "out", str)
    _typed(cfg, "rl_common", list, str)
    _typed(cfg, "sft_common", list, str)
    _typed(cfg, "eval", dict)
    _typed(cfg, "stages", list, dict)
    for k in cfg.get("eval", {}):
        if k not in EVAL_KEYS:
            raise ConfigError(f"eval.{k}", f"unknown key; expected one of {sorted(EVAL_KEYS)}")
    ev = cfg.get("eval", {})
    for k in ("samples", "max_new_tokens"):
        _typed(ev, k, int, where="eval.")
        if k in ev and ev[k] < 1:
            raise ConfigError(f"eval.{k}", f"must be >= 1, got {ev[k]}")
    for k in ("temperature", "top_p"):
        _typed(ev, k, float, where="eval.")
    _typed(ev, "template", str, where="eval.")
    _typed(ev, "stop", list, str, where="eval.")
    if not cfg["stages"]:
        raise ConfigError("stages", "no stages")
    seen: dict[str, dict] = {}
    for i, st in enumerate(cfg["stages"]):
        where = f"stages[{i}]"
        for k, kind in (("name", str), ("kind", str), ("from", str), ("data", str), ("model_config", str),
                        ("samples", int), ("keep", int), ("max_new_tokens", int), ("require_format", bool)):
            _typed(st, k, kind, where=f"{where}.")
        _typed(st, "overrides", list, str, where=f"{where}.")
        for k in ("samples", "keep", "max_new_tokens"):
            if k in st and st[k] < 1:
                raise ConfigError(f"{where}.{k}", f"must be >= 1, got {st[k]}")
        for k in st:
            if k not in STAGE_KEYS:
                raise ConfigError(f"{where}.{k}", f"unknown stage key; expected one of {sorted(STAGE_KEYS)}")
        if "name" not in st or not re.fullmatch(r"[A-Za-z0-9_\-]+", str(st["name"])):
            raise ConfigError(f"{where}.name", "every stage needs a name of letters, digits, _ or -")
        if st["name"] in seen:
            raise ConfigError(f"{where}.name", f"{st['name']!r} is used twice")
        if st.get("kind") not in KINDS:
            raise ConfigError(f"{where}.kind", f"got {st.get('kind')!r}; expected one of {KINDS}")
        needs_from = st["kind"] != "pretrain"
        if needs_from and st.get("from") not in seen:
            raise ConfigError(f"{where}.from", f"{st.get('from')!r} is not an earlier stage")
        if needs_from and st.get("from") and seen[st["from"]]["kind"] == "reject_sample":
            raise ConfigError(f"{where}.from", f"{st['from']!r} makes data, not weights")
        if st["kind"] == "sft":
            src = seen.get(st.get("data"))
            if src is None or src["kind"] != "reject_sample":
                raise ConfigError(f"{where}.data", f"{st.get('data')!r} is not an earlier reject_sample stage")
        seen[st["name"]] = st
    return cfg


def _typed(d: dict, key: str, kind: type, item: type = None, where: str = "") -> None:
    """d[key] (when present) is a `kind` (of `item`s): a wrong type is named by its key path."""
    if key not in d:
        return
    v = d[key]
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a mapping"}
    ok = isinstance(v, kind) and not (kind in (int, float) and isinstance(v, bool))
    if kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
    if not ok:
        raise ConfigError(f"{where}{key}", f"expected {names[kind]}, got {type(v).__name__} {v!r}"[:200])
    if item is not None:
        for i, x in enumerate(v):
            if not isinstance(x, item):
                raise ConfigError(f"{where}{key}[{i}]", f"expected {names[item]}, got {type(x).__name__} {x!r}"[:200])


class Runner:
    def __init__(self, cfg: dict, out: str, nproc: int, seed: Optional[int] = None):
        self.cfg, self.out, self.nproc, self.seed = cfg, os.path.abspath(out), nproc, seed
        # training stages take it as a config override, sampling commands as a flag
        self.train_seed = [] if seed is None else [f"seed={seed}"]
        self.sample_seed = [] if seed is None else ["--seed", str(seed)]
        self.model_config = _config_path(cfg["model_config"])
        self.layout = LAYOUT_4 if nproc == 4 else (["parallel.tp=2"] if nproc == 2 else [])
        self.eval_cfg = {"samples": 8, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32, "template": "raw",
                         "stop": [], **cfg.get("eval", {})}
        self.stages = {st["name"]: st for st in cfg["stages"]}

    def config_of(self, stage: str) -> str:
        st = self.stages[stage]
        return _config_path(st["model_config"]) if st.get("model_config") else self.model_config

    def run_config(self, stage: str, overrides: Optional[list[str]] = None):
        from r1mega.config import load_config

        return load_config(self.config_of(stage), [f"data.cache_dir={self.out}/data", *(overrides or [])])

    # ---- processes -------------------------------------------------------------------------
    def launch(self, argv: list[str], log: str) -> str:
        if self.nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                   "-m", "r1mega.cli", *argv]
        else:
            cmd = [sys.executable, "-m", "r1mega.cli", *argv]
        print("$ r1mega " + " ".join(_quote(a) for a in argv), flush=True)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, preexec_fn=_die_with_parent,
                                  env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        with open(log, "a") as f:
            f.write(proc.stdout)
        if proc.returncode:
            tail = open(log).read()[-3000:]
            raise SystemExit(f"pipeline: `{argv[0]}` failed (exit {proc.returncode}); log {log}:\n{tail}")
        return proc.stdout

    def layout_of(self, stage: str) -> list[str]:
        """--nproc's layout; a dense student has no experts to spread, so its ranks are TP x DP."""
        if self.run_config(stage).student is not None:
            return [o for o in self.layout if not o.startswith("parallel.ep=")]
        return self.layout

    def model_args(self, stage: str) -> list[str]:
        """`--config` and layout flags for generate / eval / reject-sample on a stage's model."""
        tp_ep = {"parallel.tp=2": ["--tp", "2"], "parallel.ep=2": ["--ep", "2"]}
        flags = [f for o in self.layout_of(stage) for f in tp_ep[o]]
        return ["--config", self.config_of(stage), *flags, f"data.cache_dir={self.out}/data"]

    # ---- data --------------------------------------------------------------------------------
    def prompt_files(self) -> tuple[str, str]:
        """The RL prompt split and the held-out split, as prompt JSONL."""
        from r1mega.config import load_config
        from r1mega.data.synthetic import synthetic_prompts

        root = os.path.join(self.out, "prompts")
        train, held = os.path.join(root, "train.jsonl"), os.path.join(root, "heldout.jsonl")
        if os.path.exists(held):
            return train, held
        os.makedirs(root, exist_ok=True)
        kind = load_config(self.model_config).data.synthetic
        if kind in ("addition", "sum3"):  # the fixed splits: every RL prompt once, every held-out problem
            splits = {train: synthetic_prompts(kind, 0, 0, heldout=False), held: synthetic_prompts(kind, 0, 0, heldout=True)}
        else:  # the seeds GRPO's own held-out evaluation uses for these tasks
            splits = {train: synthetic_prompts(kind, 128, 3, heldout=False), held: synthetic_prompts(kind, 128, 0, heldout=True)}
        for path, rows in splits.items():
            write_text_atomic(path, "".join(json.dumps({"id": f"{os.path.basename(path)[:-6]}-{i}", **r}) + "\n"
                                 for i, r in enumerate(rows)))
        return train, held

    def tokenizer(self, stage: str) -> str:
        from r1mega.data.synthetic import resolve_tokenizer

        cfg = self.run_config(stage)
        return resolve_tokenizer(cfg.data, cfg.active_model.vocab_size)

    # ---- stages --------------------------------------------------------------------------------
    def weights(self, stage: str) -> str:
        """A weights-only copy of a stage's final checkpoint (step 0, no optimizer states), so the next
        stage starts from the weights with its own step count and a fresh optimizer."""
        from r1mega.generation.model_source import resolve_checkpoint

        dst = os.path.join(self.out, stage, "weights")
        if os.path.exists(os.path.join(dst, "meta.json")):
            return dst
        from r1mega.output_dir import MARKER, read_marker
        from r1mega.train.checkpoint import read_meta, verify_manifest, write_manifest

        src = resolve_checkpoint(os.path.join(self.out, stage, "run"))
        # the files copied are the ones the stage saved: the fresh manifest written below would
        # otherwise vouch for rank files swapped in or a meta.json edited since
        verify_manifest(src, read_meta(src))
        tmp = dst + ".tmp"
        if os.path.lexists(tmp):  # a crashed earlier copy: removed only if this pipeline made it
            marker = read_marker(tmp) if os.path.isdir(tmp) else None
            if marker is None or marker.get("command") != "pipeline":
                raise ConfigError("--out", f"{tmp} exists and was not made by `r1mega pipeline`; "
                                  f"move it away (the pipeline does not remove what it did not write)")
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        write_text_atomic(os.path.join(tmp, MARKER), json.dumps({"command": "pipeline"}))
        for name in os.listdir(src):
            if name.startswith("rank"):
                shutil.copy2(os.path.join(src, name), tmp)
        with open(os.path.join(src, "meta.json")) as f:
            meta = json.load(f)
        meta = {k: v for k, v in meta.items() if k not in ("optimizer_step", "skipped_steps", "consumed_samples")}
        write_text_atomic(os.path.join(tmp, "meta.json"), json.dumps({**meta, "kind": "weights", "source": src, "step": 0},
                                                          indent=1))
        write_manifest(tmp)
        os.replace(tmp, dst)
        return dst

    def check_stages(self) -> None:
        """Each stage's config, overrides and layout validated as its command will (no files written)."""
        from r1mega.config import validate_rl, validate_training
        from r1mega.generation.records import TEMPLATES

        world = self.nproc
        e = self.eval_cfg
        if e["template"] not in TEMPLATES:
            raise ConfigError("eval.template", f"expected one of {TEMPLATES}, got {e['template']!r}")
        if not (0 <= e["temperature"] and 0 < e["top_p"] <= 1):
            raise ConfigError("eval", f"temperature must be >= 0 and top_p in (0, 1], got {e['temperature']}, "
                              f"{e['top_p']}")
        if any(s == "" for s in e["stop"]):
            raise ConfigError("eval.stop", "an empty stop string would end every sample at its first token")
        for i, st in enumerate(self.cfg["stages"]):
            name, kind = st["name"], st["kind"]
            if not os.path.isfile(self.config_of(name)):
                raise ConfigError(f"stages[{i}].model_config" if st.get("model_config") else "model_config",
                                  f"file not found: {self.config_of(name)}")
            if self.unavailable(name):
                continue
            extra = [*st.get("overrides", []), *self.layout_of(name), f"train.run_dir={self.out}/{name}/run",
                     *self.train_seed]
            if kind == "grpo":
                extra = [*self.cfg.get("rl_common", []), *extra]
            elif kind == "sft":
                extra = [*self.cfg.get("sft_common", []), *extra]
            try:
                cfg = self.run_config(name, extra)
                cfg = validate_training(cfg, world, needs_data=kind == "pretrain", rollouts=kind == "grpo")
                if kind == "grpo":
                    validate_rl(cfg, world, resuming=True)  # train.load is the previous stage's weights
            except ConfigError as err:
                raise ConfigError(f"stages[{i}] ({name}): {err.key}", str(err).split(": ", 1)[-1]) from None

    def config_digest(self, stage: str) -> str:
        """A hash of what the stage's model config file says (not its comments or spacing): an edited
        file makes the stage's earlier results stale though its path, the option, did not change."""
        import dataclasses

        from r1mega.config import load_config
        from r1mega.output_dir import config_hash

        return config_hash(dataclasses.asdict(load_config(self.config_of(stage))))

    def unavailable(self, stage: str) -> Optional[str]:
        """Why a stage cannot run in this checkout (a dense student without the dense family), or None."""
        if self.run_config(stage).student is not None and importlib.util.find_spec("r1mega.models.dense") is None:
            return "skipped: this checkout has no dense student family (r1mega/models/dense, issue #13)"
        return None

    def run_stage(self, st: dict, train_prompts: str) -> None:
        name, kind = st["name"], st["kind"]
        where = os.path.join(self.out, name)
        config = self.config_of(name)
        common = [f"data.cache_dir={self.out}/data", f"train.run_dir={where}/run", *self.layout_of(name),
                  *self.train_seed]
        if kind in ("pretrain", "grpo", "sft"):  # GRPO saves only at intervals: make its last step one
            common.append(f"train.save_interval={self.run_config(name, st.get('overrides')).train.steps}")
        log = os.path.join(self.out, "logs", f"{name}.txt")
        if kind == "pretrain":
            self.launch([kind, "--config", config, *common, *st.get("overrides", [])], log)
        elif kind == "grpo":
            self.launch(["grpo", "--config", config, *common, *self.cfg.get("rl_common", []),
                         f"train.load={self.weights(st['from'])}", *st.get("overrides", [])], log)
        elif kind == "sft":
            data = os.path.join(self.out, st["data"], "sft.jsonl")
            self.launch(["sft", "--config", config, *common, *self.cfg.get("sft_common", []),
                         "data.synthetic=null", f"data.tokenizer={self.tokenizer(name)}", f"data.paths=[{data}]",
                         f"train.load={self.weights(st['from'])}", *st.get("overrides", [])], log)
        elif kind == "reject_sample":
            e = self.eval_cfg
            argv = ["reject-sample", "--model", self.weights(st["from"]), *self.model_args(st["from"]),
                    "--prompts", train_prompts, "--out", where, "--samples", str(st.get("samples", 8)),
                    "--keep", str(st.get("keep", 2)), "--temperature", "1.0", "--top-p", "1.0",
                    "--max-new-tokens", str(st.get("max_new_tokens", e["max_new_tokens"])),
                    "--template", e["template"], "--problems-per-round", "16", *[f"--stop={s}" for s in e["stop"]],
                    *self.sample_seed]
            if not st.get("require_format", False):
                argv.append("--no-require-format")
            out = self.launch(argv, log)
            print("\n".join(out.strip().splitlines()[-6:]), flush=True)

    def eval_dir(self, stage: str) -> str:
        """<out>/eval/<protocol>/<stage>: a rerun may change the `eval:` settings (finished stages stay
        valid), and each protocol's numbers come from samples drawn under it; earlier ones stay."""
        from r1mega.output_dir import config_hash

        e = self.eval_cfg  # 1 and 1.0 are one temperature
        protocol = config_hash({"eval": {**e, "temperature": float(e["temperature"]), "top_p": float(e["top_p"])},
                                "seed": self.seed})
        return os.path.join(self.out, "eval", protocol, stage)

    def evaluate(self, stage: str, held_out: str) -> dict:
        e = self.eval_cfg
        out = self.eval_dir(stage)
        summary = os.path.join(out, "summary.json")
        if not os.path.exists(summary):
            self.launch(["eval", "--model", self.weights(stage), *self.model_args(stage), "--data", held_out,
                         "--out", out, "--samples", str(e["samples"]), "--temperature", str(e["temperature"]),
                         "--top-p", str(e["top_p"]), "--max-new-tokens", str(e["max_new_tokens"]),
                         "--template", e["template"], "--greedy", "--problems-per-round", "32",
                         *[f"--stop={s}" for s in e["stop"]], *self.sample_seed],
                        os.path.join(self.out, "logs", f"eval-{stage}.txt"))
        with open(summary) as f:
            return json.load(f)["heldout"]


def _die_with_parent() -> None:
    """In a stage's process before it starts: SIGTERM it when the pipeline dies (even by kill -9), so
    no orphaned stage keeps writing <out> while a rerun takes the directory over (Linux; else no-op)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stage_options(cfg: dict, st: dict, seed: Optional[int] = None, upstream: tuple = ()) -> str:
    """A hash of what a stage ran with: its entry, the pipeline-wide keys it inherits (the model config;
    rl_common for GRPO, sft_common for SFT), --seed and the options of the stages it starts from or
    trains on (`upstream`: a changed earlier stage makes its results stale); not the evaluation
    protocol or the output directory, which a rerun may change, nor another kind's settings (new RL
    settings keep the base)."""
    from r1mega.output_dir import config_hash

    own = {"grpo": "rl_common", "sft": "sft_common"}.get(st["kind"])
    shared = {k: v for k, v in cfg.items() if k not in ("stages", "out", "eval", "rl_common", "sft_common") or k == own}
    if seed is not None:  # absent without --seed: runs from before the option resume as they were
        shared["--seed"] = seed
    if upstream:
        shared["upstream"] = list(upstream)
    return config_hash({"stage": st, "shared": shared})


def _config_path(path: str) -> str:
    """A model config path as given, else relative to the repository (configs/... from anywhere)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(REPO, path)


def _quote(a: str) -> str:
    return repr(a) if (not a or any(c in a for c in " \n\t")) else a


def table(rows: list[dict], k: int) -> str:
    head = (f"| stage | kind | from | held-out pass@1 | cons@{k} | pass@{k} | greedy | minutes |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |\n")
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    return head + "".join(
        f"| {r['stage']} | {r['kind']} | {r.get('from') or '-'} | {fmt(r.get('pass@1'))} | {fmt(r.get(f'cons@{k}'))} | "
        f"{fmt(r.get(f'pass@{k}'))} | {fmt(r.get('greedy'))} | {fmt(r.get('minutes'))} |\n" for r in rows)


def plot(rows: list[dict], k: int, png: str, eval_cfg: dict) -> None:
    from r1mega.plotting import saved_figure

    scored = [r for r in rows if r.get("pass@1") is not None]
    xs = range(len(scored))
    with saved_figure(png, (8, 4)) as ax:
        w = 0.38
        ax.bar([x - w / 2 for x in xs], [r["pass@1"] for r in scored], w, label="pass@1 (mean over k samples)")
        ax.bar([x + w / 2 for x in xs], [r[f"cons@{k}"] for r in scored], w, label=f"cons@{k} (majority vote)")
        ax.set_xticks(list(xs), [r["stage"] for r in scored], rotation=20, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"r1mega pipeline: DeepSeek-R1 stages on a tiny MoE (k={k}, T={eval_cfg['temperature']}, "
                     f"top-p {eval_cfg['top_p']})")
        ax.legend()


def run(args: argparse.Namespace) -> int:
    if args.nproc not in (1, 2, 4):
        raise ConfigError("--nproc", f"must be 1, 2 (TP2) or 4 (TP2 x EP2), got {args.nproc}")
    from r1mega.output_dir import claim_on_rank0

    cfg = load_pipeline(args.config)
    if args.seed is not None and args.seed < 0:
        raise ConfigError("--seed", f"must be >= 0, got {args.seed}")
    runner = Runner(cfg, args.out or cfg.get("out", "runs/pipeline"), args.nproc, args.seed)
    runner.check_stages()  # every stage's options, before the first stage runs
    claim_on_rank0(runner.out, "pipeline")  # held until the command ends
    train_prompts, held_out = runner.prompt_files()
    k = int(runner.eval_cfg["samples"])
    rows, notes, hashes, t_all = [], {}, {}, time.perf_counter()
    for st in cfg["stages"]:
        name = st["name"]
        done = os.path.join(runner.out, name, "DONE")
        row = {"stage": name, "kind": st["kind"], "from": st.get("from")}
        options = _stage_options(cfg, st, args.seed, tuple(hashes[s] for s in (st.get("from"), st.get("data")) if s))
        hashes[name] = options
        config = runner.config_digest(name)
        if os.path.exists(done):
            with open(done) as f:
                finished = json.load(f)
            if finished.pop("options", options) != options:  # DONE files from before had none
                raise ConfigError(f"stages.{name}", f"{done}: this stage finished earlier with other options (its "
                                  f"entry, model_config, *_common, --seed or a stage it builds on changed); its "
                                  f"results would be reported for options it did not run. Use another --out, or "
                                  f"restore the stage's options")
            if finished.pop("model_config_hash", config) != config:  # recorded since; older DONE files lack it
                raise ConfigError(f"stages.{name}", f"{done}: this stage finished earlier with another content of "
                                  f"{runner.config_of(name)} (the file was edited since); its results would be "
                                  f"reported for a config it did not run. Use another --out, or restore the file")
            row.update(finished)
            print(f"== {name}: done earlier, skipped", flush=True)
        else:
            print(f"== {name} ({st['kind']})", flush=True)
            t0 = time.perf_counter()
            skipped = [s for s in (st.get("from"), st.get("data")) if s in notes]
            note = (f"skipped: stage {skipped[0]} was skipped" if skipped else runner.unavailable(name))
            if note is None:
                runner.run_stage(st, train_prompts)
            row["minutes"] = (time.perf_counter() - t0) / 60
            if note:  # no DONE: a later run in a checkout that can do it will
                row["note"] = note
                print(f"   {name}: {note}", flush=True)
            else:
                write_text_atomic(done, json.dumps({"minutes": row["minutes"], "options": options,
                                                    "model_config_hash": config}))
        if row.get("note"):
            notes[name] = row["note"]
        if st["kind"] in ("pretrain", "grpo", "sft") and "note" not in row:
            s = runner.evaluate(name, held_out)
            row.update({key: s.get(key) for key in ("pass@1", f"cons@{k}", f"pass@{k}", "greedy")})
            print(f"   {name}: held-out pass@1={s['pass@1']:.3f} cons@{k}={s[f'cons@{k}']:.3f} "
                  f"greedy={s.get('greedy', float('nan')):.3f}", flush=True)
        rows.append(row)
    md = table(rows, k)
    write_text_atomic(os.path.join(runner.out, "table.md"), md)
    write_text_atomic(os.path.join(runner.out, "table.json"), json.dumps(rows, indent=1))
    png = os.path.join(runner.out, "stages.png")
    plot(rows, k, png, runner.eval_cfg)
    print(md, end="")
    for r in rows:
        if r.get("note"):
            print(f"{r['stage']}: {r['note']}")
    print(f"plot: {png}  ({(time.perf_counter() - t_all) / 60:.1f} min this run)")
    last = [r for r in rows if r.get("pass@1") is not None][-1]
    print(f"stages={len(rows)} final_stage={last['stage']} pass@1={last['pass@1']:.4f} "
          f"cons@{k}={last[f'cons@{k}']:.4f}", flush=True)
    return 0
