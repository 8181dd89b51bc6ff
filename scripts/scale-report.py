"""Renders target/scale/results.json (from scripts/scale) as the "Many sidecars" section of
BENCHMARKS.md, between its markers (appended the first time). scripts/bench-report.py keeps the
section when it rewrites the rest of the file."""
import json
import sys

START, END = "<!-- scale:start -->", "<!-- scale:end -->"
results = json.load(open(sys.argv[1]))
path = sys.argv[2] if len(sys.argv) > 2 else "BENCHMARKS.md"

MODES = {
    "notify": "notify (LISTEN/NOTIFY, direct)",
    "nats": "nats (direct)",
    "nats-pgbouncer": "nats, store through PgBouncer",
    "poll-pgbouncer": "poll through PgBouncer (1 s)",
}


def mode(r):
    name = MODES.get(r["mode"], r["mode"])
    budget = r.get("budget", 4)
    return name if budget == 1 else f"{name}, `--database-max-connections {budget}`"


def ms(v):
    return "–" if v is None else f"{v:,.1f}"


rows = []
burst_rows = []
for r in sorted(results, key=lambda r: (r["sidecars"], list(MODES).index(r["mode"]), r.get("budget", 4))):
    n = r["sidecars"]
    if r.get("revoked", r["revocations"]):
        queries = f"{r['queries_per_revocation']:.1f} ({r.get('queries_per_revocation_net', 0):.1f})"
    else:
        queries = "none acknowledged: no connection left for the write"
    cells = [
        str(n),
        mode(r),
        f"{r['serving']}/{n} in {r['ready_seconds']} s",
        f"{r['idle_connections_later'] / max(r['serving'], 1):.2f} ({r['idle_connections_later']})",
        f"{r['idle_queries_per_second_per_sidecar']:.3f}",
        queries,
        f"{ms(r['propagation_p50_ms'])} / {ms(r['propagation_p99_ms'])}",
        f"{r['rss_mb']:.1f}",
    ]
    rows.append("| " + " | ".join(cells) + " |")
    b = r.get("burst")
    if b and "writes" in b:
        refused = b.get("refused_everywhere_ms") or []
        burst_rows.append("| " + " | ".join([
            str(n),
            mode(r),
            f"{b['most_connections']} (N + {b['most_connections'] - n})",
            f"{b['failed_writes']} of {b['writes']}",
            f"{b['failed_verifies']} of {b['verifies']}",
            f"{ms(b['verify_p50_ms'])} / {ms(b['verify_p99_ms'])}",
            (" / ".join(f"{v:,.0f}" for v in refused) or "–")
            + (f"; {b['still_accepted_after_10s']} sidecar-rounds still accepted it after 10 s"
               if b.get("still_accepted_after_10s") else "")
            + (f"; {b['unavailable_for_10s']} sidecar-rounds answered only UNAVAILABLE"
               if b.get("unavailable_for_10s") else ""),
        ]) + " |")
    elif b:
        burst_rows.append(f"| {n} | {mode(r)} | {b.get('most_connections', '–')} | {b.get('error', 'no result')} | | | |")
section = f"""{START}
## Many sidecars on one PostgreSQL (`scripts/scale`, SPEC §10)

N real sidecar processes (release build) on one local PostgreSQL 15 (`max_connections` 100, the
sidecars connecting as an ordinary role, so 97 slots), on the same 2 cores as everything else.
Idle figures are read after the pooled connections' idle timeout; then {results[0]['revocations']}
revocations are made on one instance, one every 200 ms, and the run waits until every instance has
applied every one. "Queries per revocation" is every store query of the whole fleet during that
phase divided by the revocations (the write itself included), and in brackets the same without
the periodic polls (`sync_catch_ups_total{{why="poll"}}`), which the fleet makes whether or not
anything changes; propagation is commit (the writer's
wall clock) to applied, over every instance, read from their `sync_propagation_seconds`
histograms (bucket-interpolated). PgBouncer: transaction pooling, `default_pool_size` 10.

| sidecars | mode | SERVING | PostgreSQL connections per idle sidecar (total) | queries/s per idle sidecar | queries per revocation, fleet (without the periodic polls) | propagation p50 / p99 ms | RSS MB per sidecar |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Rows marked `--database-max-connections 4` ran with the budget that was the default before
issue 28 (all of them but the 40-sidecar row were measured before issue 28, on the code of
their time); the others with the default of 1, every query and write on the one connection.

Under a burst (`examples/fleet_burst`, 3 rounds): 20 users log in per round, each on one
sidecar (an Issue, which reads the new user's cutoff), and each token is verified at once on
every 7th sidecar (a cutoff-cache miss on each); every other user's token is then revoked on
another sidecar (a committed write between the reads). After each round one session is revoked and every sidecar is asked
every 20 ms (100 ms above 100 sidecars) until it refuses the token. Connections are the fleet's, sampled every 50 ms.

| sidecars | mode | most PostgreSQL connections during the burst | failed Issue and Revoke calls | failed verifies | Verify p50 / p99 ms during the burst | revoked token refused by every sidecar after, ms (per round) |
|---|---|---|---|---|---|---|
{chr(10).join(burst_rows) if burst_rows else "| – | not measured in this run | | | | | |"}

Targets (issue 28): zero failed writes and connections never above N + 3 during the burst; a
revoked token refused by every sidecar within 500 ms; propagation p99 ≤ 50 ms; ≤ 0.2 queries/s
per idle sidecar.

Targets (issue 14): 90 sidecars in notify mode all SERVING on a default PostgreSQL; ≤ 1
connection per idle sidecar; ≤ 5 queries per revocation whatever N; propagation p99 ≤ 50 ms in
notify and nats modes at N = 100. Before this work (issue 14's measurements): 3.0 connections per
idle sidecar, 20.6 queries per revocation at N = 20, and the 34th notify-mode sidecar found
PostgreSQL full.

100 sidecars connecting directly (notify, nats) are more than the 97 slots: 97 get their one
connection and serve Verify from memory, the rest stay NOT_SERVING, and a write finds no
connection left (notify) or waits for one. That is the capacity limit the table in
deploy/README.md plans around; through PgBouncer the same 100 use 10 server connections.
{END}"""

try:
    text = open(path).read()
except FileNotFoundError:
    text = ""
if START in text and END in text:
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    text = before + section + after
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
print(f"wrote the scale section of {path}")
