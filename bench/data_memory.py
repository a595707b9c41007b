"""Peak memory of the data pipeline on one long single-line document: training a
tokenizer on it and encoding it into a token file.

A JSONL file holds one record whose text is ``--mb`` MB of synthetic English on one line
(`lmforge.data.tasks.synthetic_corpus` documents joined by spaces). Each stage runs in a
fresh subprocess so its peak resident set (``ru_maxrss``) is its own:

* ``tokenizer``: `train_tokenizer_on_files([file], 512)` (the pretrain default vocabulary);
* ``encode``: `build_token_file([file], tok, out, num_workers=0)` with a tokenizer trained
  beforehand on a small sample (so only the encoding is measured).

``--impl REV`` runs the same stages on the code of git revision REV (``git archive REV
lmforge`` unpacked into a temporary folder, first on ``PYTHONPATH``): the before of a change
(``--impl c91b109``: before issue 12's streaming). The baseline is the resident set after the
imports, before the stage; peaks are ``VmHWM`` (the stage process's own).

    python bench/data_memory.py [--mb 50] [--impl current|REV] [--stages tokenizer,encode]

Last line: ``RESULT data_memory mb=<n> impl=<i> tokenizer_peak_mib=<a> encode_peak_mib=<b>``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    """Peak resident set of this process: ``VmHWM`` (per address space, so not inherited
    from the parent across exec as ``ru_maxrss`` is on Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_document(path: Path, mb: int) -> None:
    """One JSONL record of ``mb`` MB of text on a single line."""
    from lmforge.data.tasks import synthetic_corpus

    docs = synthetic_corpus(2000, seed=0)
    unit = " ".join(docs)
    target = mb * 10**6
    text = (unit + " ") * (target // (len(unit) + 1) + 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": text[:target].strip()}) + "\n")


def stage(name: str, data: Path, work: Path) -> dict:
    from lmforge.data.tokenizer_training import train_tokenizer_on_files
    from lmforge.data.tokens import build_token_file
    from lmforge.tokenizer import Tokenizer

    sample = None
    if name == "encode":
        from lmforge.data.tasks import synthetic_corpus

        sample = Tokenizer.train(synthetic_corpus(2000, seed=0), vocab_size=512)
    base = rss_mib()
    start = time.perf_counter()
    if name == "tokenizer":
        tok, docs, _ = train_tokenizer_on_files([data], 512)
        extra = {"vocab": tok.vocab_size, "docs": docs}
    else:
        info = build_token_file([data], sample, work / "tokens", num_workers=0)
        extra = {"tokens": info.num_tokens, "docs": info.num_docs}
    import lmforge

    where = str(Path(lmforge.__file__).parent)
    return {"stage": name, "lmforge": where, "base_mib": round(base), "peak_mib": round(rss_mib()),
            "seconds": round(time.perf_counter() - start, 1), **extra}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--impl", default="current", help="'current' or a git revision")
    parser.add_argument("--stages", default="tokenizer,encode")
    parser.add_argument(
        "--child", nargs=3, metavar=("STAGE", "DATA", "WORK"), help=argparse.SUPPRESS
    )
    parser.add_argument("--make", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_document(Path(args.make), args.mb)
        return
    if args.child:
        name, data, work = args.child
        print(json.dumps(stage(name, Path(data), Path(work))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = REPO
        if args.impl != "current":
            root = tmp / "rev"
            root.mkdir()
            archive = subprocess.run(["git", "archive", args.impl, "lmforge"], cwd=REPO,
                                     check=True, capture_output=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        data = tmp / "long.jsonl"
        # in a child, so that this process stays small (children inherit nothing from it)
        subprocess.run([sys.executable, __file__, "--make", str(data), "--mb", str(args.mb)],
                       check=True)  # fmt: skip
        results = {}
        for name in args.stages.split(","):
            cmd = [sys.executable, __file__, "--child", name, str(data), str(tmp)]
            env = {**os.environ, "PYTHONPATH": str(root)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                print(out.stderr[-2000:])
                results[name] = {"peak_mib": f"failed({out.returncode})"}
                continue
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{args.impl} {name}: {results[name]}", flush=True)
    peaks = " ".join(f"{n}_peak_mib={r['peak_mib']}" for n, r in results.items())
    print(f"RESULT data_memory mb={args.mb} impl={args.impl} {peaks}")


if __name__ == "__main__":
    main()
