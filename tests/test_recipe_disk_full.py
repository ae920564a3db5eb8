"""A full disk (here a file-size limit, RLIMIT_FSIZE) while generate / eval / reject-sample write
their outputs is a named user error (`error: <file>: cannot write ...`, exit 2), not a traceback; the
samples written before stay, a rerun resumes them, and no file is left half-written."""
import os
import resource
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 4096  # bytes any file may grow to in the limited child


def _limited(code: str, cwd) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, preexec_fn=limit, timeout=120)


def _records(pid: str, k: int) -> list[dict]:
    return [{"id": pid, "sample": s, "completion": "x" * 300, "finish_reason": "eos"} for s in range(k)]


def test_a_shard_write_on_a_full_disk_is_named_and_resumes(tmp_path):
    out = tmp_path / "gen"
    r = _limited(f"""
        from r1mega.errors import run_command
        from r1mega.generation.store import SampleStore

        def body():
            store = SampleStore({str(out)!r}, 3, {{"template": "raw"}})
            for p in range(20):  # 20 problems x 3 samples x ~370 bytes: past the 4 KiB limit
                store.write([(str(p), [{{**r, "id": str(p)}} for r in {_records('PID', 3)!r}])])
            store.close()
            return 0
        raise SystemExit(run_command(body))
        """, tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"error: {out / 'shard-00000.jsonl'}: cannot write (File too large)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    from r1mega.generation.store import SampleStore

    store = SampleStore(str(out), 3, {"template": "raw"})  # no limit now: the torn tail is repaired
    done = set(store.done)
    store.close()
    assert done == {str(p) for p in range(len(done))} and 0 < len(done) < 20  # whole problems, in order
    assert not os.path.exists(out / ".r1mega.lock")


def test_summaries_and_sft_data_on_a_full_disk_keep_the_old_file(tmp_path):
    old = "old summary\n"
    (tmp_path / "summary.json").write_text(old)
    (tmp_path / "sft.jsonl").write_text(old)
    r = _limited(f"""
        import sys
        from r1mega.atomic_io import write_jsonl_atomic, write_text_atomic
        from r1mega.errors import R1MegaError

        for name, write in (("summary.json", lambda p: write_text_atomic(p, "y" * 10000)),
                            ("sft.jsonl", lambda p: write_jsonl_atomic(p, [{{"messages": "z" * 10000}}]))):
            try:
                write({str(tmp_path)!r} + "/" + name)
            except R1MegaError as e:
                print(e)
            else:
                sys.exit("no error for " + name)
        """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{tmp_path / name}: cannot write (File too large); free space or raise the "
                                     f"file-size limit, then rerun" for name in ("summary.json", "sft.jsonl")]
    assert (tmp_path / "summary.json").read_text() == old and (tmp_path / "sft.jsonl").read_text() == old
    assert sorted(os.listdir(tmp_path)) == ["sft.jsonl", "summary.json"]  # no .tmp left
