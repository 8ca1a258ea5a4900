"""The worker's token counter (CompactBPE) against tiktoken: CPU per count, worst cases, start-up.

1. A count of 1,100,000 characters (bounded.py's ``MAX_EXACT_CHARS``) through ``bounded_len``, as a
   pre-count of a huge prompt runs: prose (this repo's README), CJK text with punctuation, CJK
   without (one piece up to each 1,024-character cut), random CJK characters, random lowercase
   letters, one letter repeated, spaces. Each counter starts with an empty piece cache (a new
   CompactBPE per run); runs alternate between the two; per case the median process CPU.
2. Small texts, warm (every piece cached, as a worker's steady state) and the README cold.
3. Start-up: loading an encoding with tiktoken (what a worker did) vs mapping the cached table, and
   building the table the first time on a host (a fresh cache directory).

Prints a table and one JSON line. tiktoken's files and our tables load from ``TIKTOKEN_CACHE_DIR``.

    .venv/bin/python bench/bpe_worst_case.py [--runs 3] [--encoding o200k_base]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from workers.accounting.bounded import MAX_EXACT_CHARS, TiktokenLengths, bounded_len  # noqa: E402
from workers.accounting.bpetable import load_table  # noqa: E402
from workers.accounting.compactbpe import CompactBPE  # noqa: E402
from workers.accounting.tokens import TokenCounter  # noqa: E402

N = MAX_EXACT_CHARS
#: Frequent Chinese characters, for CJK text that merges like real text.
COMMON = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所"
    "去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从知"
    "数据系统程序类型函数变量内存安全并发模块错误测试文档代码运行结果示例标准库引用生命周期特性宏迭代闭包"
)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def texts(repo: Path) -> dict[str, str]:
    rng = random.Random(1)
    cjk: list[str] = []
    while len(cjk) < N:
        cjk.extend(rng.choice(COMMON) for _ in range(rng.randint(6, 30)))
        cjk.append(rng.choice("，。、；："))
    return {
        "prose (README)": ((repo / "README.md").read_text() * 20)[:N],
        "CJK with punctuation": "".join(cjk)[:N],
        "CJK without punctuation": "".join(rng.choice(COMMON) for _ in range(N)),
        "CJK random characters": "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(N)),
        "letters random": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(N)),
        "one letter repeated": "a" * N,
        "spaces": " " * N,
    }


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = cpu()
    result = fn()
    return cpu() - start, result


START = """
import resource, sys
from workers.accounting import bpefiles
def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF); return u.ru_utime + u.ru_stime
if sys.argv[1] == "tiktoken":
    bpefiles.seed_tiktoken_cache(); import tiktoken.load, tiktoken_ext.openai_public
    t = cpu(); bpefiles.load_compacted(sys.argv[2])
else:
    import regex, workers.accounting.compactbpe as c
    t = cpu(); print(c.compact_bpe(sys.argv[2]).table.source, end=" ")
print(round(cpu() - t, 4))
"""


def start_up(name: str, cache: str) -> str:
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": cache}
    out = subprocess.run(
        [sys.executable, "-c", START, *name.split()], cwd=HERE.parent, env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return out.stdout.strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--encoding", default="o200k_base")
    args = p.parse_args()
    name = args.encoding
    tiktoken = TiktokenLengths(TokenCounter.encoding(name))
    table = load_table(name)
    rows: dict[str, dict[str, object]] = {}
    print(f"{name}: CPU seconds per count of {N:,} characters (bounded_len), median of {args.runs}")
    for label, text in texts(HERE.parent).items():
        ours_s, theirs_s = [], []
        for _ in range(args.runs):
            bpe = CompactBPE(name, table)  # an empty piece cache
            took, ours = timed(lambda: bounded_len(bpe, [text]))  # noqa: B023
            ours_s.append(took)
            took, theirs = timed(lambda: bounded_len(tiktoken, [text]))  # noqa: B023
            theirs_s.append(took)
            if ours != theirs:
                raise SystemExit(f"{label}: {ours} != {theirs}")
        a, b = statistics.median(ours_s), statistics.median(theirs_s)
        rows[label] = {"compact_s": round(a, 3), "tiktoken_s": round(b, 3), "ratio": round(a / b, 2), "tokens": ours}
        print(f"  {label:26} compact {a:6.3f} s  tiktoken {b:6.3f} s  ratio {a / b:5.2f}  {ours}")
    bpe = CompactBPE(name, table)
    readme = (HERE.parent / "README.md").read_text()
    cold, _ = timed(lambda: bpe.count(readme))
    warm_s = [timed(lambda: bpe.count(readme))[0] for _ in range(5)]
    raw_s = [timed(lambda: tiktoken.count(readme))[0] for _ in range(5)]
    small = "You are a helpful assistant. Summarize the following text in three sentences."
    bpe.count(small)
    reps = 20_000
    small_ours = statistics.median(timed(lambda: [bpe.count(small) for _ in range(reps)])[0] for _ in range(3)) / reps
    small_tik = (
        statistics.median(timed(lambda: [tiktoken.count(small) for _ in range(reps)])[0] for _ in range(3)) / reps
    )
    rows["README"] = {
        "chars": len(readme),
        "compact_cold_s": round(cold, 4),
        "compact_warm_s": round(min(warm_s), 4),
        "tiktoken_s": round(min(raw_s), 4),
    }
    rows["small"] = {"compact_us": round(small_ours * 1e6, 2), "tiktoken_us": round(small_tik * 1e6, 2)}
    print(
        f"  README ({len(readme):,} chars): compact cold {cold:.3f} s, warm {min(warm_s):.3f} s; tiktoken {min(raw_s):.3f} s"
    )
    print(f"  {len(small)}-char prompt, warm: compact {small_ours * 1e6:.1f} µs, tiktoken {small_tik * 1e6:.1f} µs")
    with tempfile.TemporaryDirectory() as fresh:
        starts = {
            "tiktoken load": [start_up(f"tiktoken {name}", os.environ.get("TIKTOKEN_CACHE_DIR", fresh))],
            "compact first (build)": [start_up(f"compact {name}", fresh)],
            "compact cached (map)": [start_up(f"compact {name}", fresh)],
        }
        for _ in range(args.runs - 1):
            starts["tiktoken load"].append(start_up(f"tiktoken {name}", os.environ.get("TIKTOKEN_CACHE_DIR", fresh)))
            starts["compact cached (map)"].append(start_up(f"compact {name}", fresh))
    rows["start_up_cpu_s"] = starts
    print("  start-up CPU s:", "; ".join(f"{k}: {', '.join(v)}" for k, v in starts.items()))
    print(json.dumps({"bench": "bpe_worst_case", "encoding": name, **rows}, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
