#!/usr/bin/env python3
"""Prints the load harness's table from results.tsv (one line per run) and
the facts ./run passes on stdin ("key value" lines)."""
import csv
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
facts = {}
for line in sys.stdin:
    key, _, value = line.rstrip("\n").partition(" ")
    facts[key] = value.strip()

TARGETS = ["direct", "nginx", "haproxy", "gatehouse"]
PROTOS = [("h1", "h1 repeated token"), ("h1-distinct", "h1 distinct tokens"), ("h2", "h2 repeated token")]


def runs(target, proto):
    return [r for r in rows if r["target"] == target and r["proto"] == proto]


def med(target, proto, field):
    vals = [float(r[field]) for r in runs(target, proto)]
    return statistics.median(vals) if vals else None


OTHER_CPU_WARN = 5  # percent of the machine


def share(row):
    """CPU used by processes outside the harness during a run, in % of the machine."""
    return 100 * float(row["other_cpu_s"]) / (int(facts["cpus"]) * int(facts["duration"]))


def mib(kb):
    return f"{int(kb) / 1024:.1f} MiB" if kb else "-"


print()
print(f"gatehouse whole-proxy load test: {facts['rounds']} interleaved rounds x {facts['duration']} s per run, "
      f"{facts['conns']} connections; h1 = wrk -t2 (HTTP/1.1 keep-alive), h2 = h2load -t2 -m{facts['h2_streams']}; "
      f"RS256 tokens ({facts['cold_alg']} for the distinct-token runs: one fresh token a request, from a pool of {facts['pool']} a round); load generator and servers share the machine's CPUs{' (pinned: servers CPU 0, load CPU 1)' if facts['pin'] == '1' else ''}.")
print("p99: h1 from wrk --latency; h2 computed from h2load's per-request log (--log-file). "
      "Medians over the rounds; 'per round' lists every run's req/s;\n"
      "'other CPU': the most CPU that processes outside the harness used during one of those runs (% of the machine).")
print()
print(f"{'target':<10} {'protocol':<19} {'req/s':>9} {'p99 ms':>8}  {'req/s per round':<26} {'non-2xx':>7} {'errors':>6}  {'other CPU':>9}")
notes = []
busy_runs = all_runs = 0
for proto, label in PROTOS:
    for t in TARGETS:
        rs = runs(t, proto)
        if not rs:
            continue
        per_round = " ".join(f"{float(r['rps']):.0f}" for r in rs)
        non2xx = sum(int(r["non2xx"] or 0) for r in rs)
        errors = sum(int(r["errors"] or 0) for r in rs)
        other = max(share(r) for r in rs)
        print(f"{t:<10} {label:<19} {med(t, proto, 'rps'):>9.0f} {med(t, proto, 'p99_ms'):>8.2f}  {per_round:<26} {non2xx:>7} {errors:>6}  {other:>8.0f}%")
        busy_runs += sum(1 for r in rs if share(r) >= OTHER_CPU_WARN)
        all_runs += len(rs)
        if non2xx or errors:
            notes.append(f"{t} {label}: {non2xx} non-2xx answers, {errors} socket/request errors over {len(rs)} runs")
        reused = sum(int(r["tokens_reused"]) for r in rs if r["tokens_reused"] not in ("", "-"))
        if reused:
            notes.append(f"{t} {label}: the token pool ({facts['pool']} a round) ran out; {reused} requests reused a token "
                         f"(raise COLD_RATE)")
    print()


if busy_runs:
    notes.append(f"in {busy_runs} of {all_runs} runs, processes outside the harness used >= {OTHER_CPU_WARN}% of the machine "
                 "(see 'other CPU'): those numbers measure the neighbour too; rerun on a quiet machine")


def ratio(a, b, proto, field="rps"):
    x, y = med(a, proto, field), med(b, proto, field)
    return x / y if x is not None and y else None


def fmt(x):
    return "-" if x is None else f"{x:.2f}x"


print("ratios of median req/s    gatehouse/nginx  gatehouse/haproxy")
for proto, label in PROTOS:
    print(f"  {label:<24} {fmt(ratio('gatehouse', 'nginx', proto)):>15}  {fmt(ratio('gatehouse', 'haproxy', proto)):>17}")
print()
print(f"gatehouse resident memory (VmRSS) after the load runs: {mib(facts.get('rss_after_kb'))} "
      f"(peak VmHWM {mib(facts.get('hwm_after_kb'))}; includes the verified-token cache, up to 100,000 entries)")
idle_n = int(facts.get("idle_conns") or 0)
if idle_n and facts.get("rss_idle_kb"):
    before, held = int(facts["rss_idle_before_kb"]), int(facts["rss_idle_kb"])
    print(f"gatehouse VmRSS with {idle_n} idle TLS keep-alive connections (fresh process, one request on each): "
          f"{mib(held)}; {mib(before)} before opening them, {(held - before) / idle_n:.1f} KiB a connection")
    print(f"  {facts.get('idle_result', '')}")
print(f"gatehouse: {facts.get('gh_warn_lines', '?')} WARN/ERROR log lines; requests_total {facts.get('gh_requests', '')}")
print("  (401/403: the correctness checks; 499: requests in flight when a load run's clients hang up at its end)")
print(f"gatehouse audit verify: {facts.get('audit_verify', '?')}")
print()

targets = []
r = ratio("gatehouse", "haproxy", "h1")
targets.append(("h1 repeated: gatehouse >= 1.2x HAProxy req/s", fmt(r), r is not None and r >= 1.2))
r = ratio("gatehouse", "nginx", "h1")
targets.append(("h1 repeated: gatehouse >= 0.8x nginx req/s", fmt(r), r is not None and r >= 0.8))
gp, np_ = med("gatehouse", "h1", "p99_ms"), med("nginx", "h1", "p99_ms")
if gp is not None and np_ is not None:
    targets.append(("h1 repeated: gatehouse p99 <= nginx p99 + 1 ms", f"{gp:.2f} <= {np_:.2f}+1 ms", gp <= np_ + 1))
r = ratio("gatehouse", "haproxy", "h1-distinct")
targets.append(("h1 distinct: gatehouse >= 1.0x HAProxy req/s", fmt(r), r is not None and r >= 1.0))
r = ratio("gatehouse", "nginx", "h2")
targets.append(("h2: gatehouse >= 1.0x nginx req/s", fmt(r), r is not None and r >= 1.0))
if idle_n and facts.get("rss_idle_kb"):
    m = int(facts["rss_idle_kb"]) / 1024
    targets.append((f"{idle_n} idle TLS connections: gatehouse VmRSS < 200 MiB", f"{m:.1f} MiB", m < 200))
print("targets")
for name, value, ok in targets:
    print(f"  {name:<52} {value:>20}  {'MET' if ok else 'MISSED'}")
if notes:
    print()
    print("notes")
    for n in notes:
        print(f"  {n}")
