"""What isolation costs: milliseconds per execute_code call, kernel sandbox against the guarded subprocess.

    python bench/sandbox.py              # 50 calls of print(1) each way, interleaved
    python bench/sandbox.py --calls 200 --code "import math; print(math.factorial(50))"

One call starts a fresh interpreter either way. The sandbox adds bubblewrap (new user, PID,
network, IPC and mount namespaces, a dozen bind mounts) and, as root, the helper that makes a
user namespace for `nobody`. Calls alternate between the two, so a machine that gets busier
halfway through slows both alike. A measurement, not a test: it prints median, p95 and min.
"""
import argparse
import statistics
import time

from nanochat.execution import execute_code, isolation_problem, run_guarded


def time_calls(run, code: str, calls: int) -> list[float]:
    """Milliseconds for each of `calls` runs of `code`."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        result = run(code)
        times.append(1000 * (time.perf_counter() - start))
        assert result.success, result.stderr
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):6.1f} ms   p95 {p95:6.1f} ms   min {ordered[0]:6.1f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--code", default="print(1)")
    args = parser.parse_args()
    if problem := isolation_problem():
        raise SystemExit(f"bench/sandbox.py: no kernel sandbox on this machine: {problem}")
    sandboxed, guarded = [], []
    time_calls(lambda c: execute_code(c, strict=True), args.code, 3)  # warm the page cache
    for _ in range(args.calls):
        sandboxed += time_calls(lambda c: execute_code(c, strict=True), args.code, 1)
        guarded += time_calls(run_guarded, args.code, 1)
    print(f"{args.calls} calls of {args.code!r}")
    print(f"  guarded subprocess (no isolation)  {summary(guarded)}")
    print(f"  kernel sandbox (bubblewrap)        {summary(sandboxed)}")
    print(f"  isolation costs                    "
          f"{statistics.median(sandboxed) - statistics.median(guarded):+.1f} ms per call (median)")


if __name__ == "__main__":
    main()
