"""The tables of ``make bench``: a run's result (``bench/run.py``) -> the Markdown that
BENCHMARKS.md holds, one function per table, in BENCHMARKS.md's order."""

from __future__ import annotations

from typing import Any

from bench.stats import MIN_FOR_P99, tail, tails_name


def table(result: dict[str, Any]) -> str:
    """Every table of a run's ``result``, in BENCHMARKS.md's order: one function per table;
    a benchmark the plan did not run has no table (or an empty one, for the always-run)."""
    lines = [
        f"routeplane benchmarks ({result['plan']}): {result['cores']} cores, Envoy "
        f"{result['envoy']}, Python {result['python']}, git {result['git_revision']}, "
        f"{result['date']}, {result['duration_s']} s",
        "",
        *_pipeline_table(result.get("pipeline", [])),
    ]
    if result.get("pipeline_one_server"):
        lines += _pipeline_one_server_table(result["pipeline_one_server"])
    if result.get("change_cost"):
        from bench import change_cost

        lines += change_cost.table(result["change_cost"])
    if result.get("idle_load"):
        lines += _idle_load_table(result["idle_load"])
    if result.get("fleet_load"):
        from bench import fleet_load

        lines += fleet_load.table(result["fleet_load"])
    if "autoscale_windows" in result:
        from bench import autoscale

        lines += autoscale.table(result["autoscale_windows"])
    if "load" in result:
        lines += _load_tables(result["load"])
    if result.get("lrs_fleet"):
        from bench import lrs_fleet

        lines += lrs_fleet.table(result["lrs_fleet"])
    lines += _propagation_table(result["propagation"], result.get("cold_start"))
    if result.get("propagation_by_size"):
        from bench import propagation

        lines += ["", *propagation.size_table(result["propagation_by_size"])]
    if result.get("keda"):
        from bench import keda

        lines += keda.table(result["keda"])
    if result.get("traffic"):
        from bench import traffic

        lines += ["", *traffic.table(result["traffic"])]
    if result.get("orca"):
        from bench import orca

        lines += orca.table(result["orca"])
    if result.get("rollout"):
        from bench import rollout

        lines += rollout.table(result["rollout"])
    if "proxyless" in result:
        lines += _proxyless_table(result["proxyless"])
    lines += _registry_watch_table(result["registry_watch"])
    if result.get("heartbeats"):
        from bench import heartbeats

        lines += heartbeats.table(result["heartbeats"])
    if result.get("idle"):
        lines += _idle_table(result["idle"])
    lines += _fleet_table([*result["fleet"], *([result["storm"]] if "storm" in result else [])])
    if "workers" in result:
        from bench import workers as workers_bench

        lines += workers_bench.table(result["workers"])
    if "workers_default" in result:
        from bench import workers_default

        lines += workers_default.table(result["workers_default"])
    lines += _dataplane_table(result["dataplane"])
    return "\n".join(lines) + "\n"


def _pipeline_table(rows: list[dict[str, Any]]) -> list[str]:
    changes = [r[k] for r in rows for k in ("change_cpu_ms_1_groups", "change_cpu_ms_10_groups")]
    lines = [
        "Pipeline step alone (no registry, no network): full rebuild = one fresh step, wall ms "
        "(median of 3); a change = one replica moved, CPU ms of the step that follows, "
        f"N = {_n(changes)} changes, p50 / {tails_name(changes)}",
        "| servers | replicas | full rebuild | change, 1 group | change, 10 groups |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        one, ten = row["change_cpu_ms_1_groups"], row["change_cpu_ms_10_groups"]
        lines.append(
            f"| {row['servers']} | {row['replicas']} | {row['full_rebuild_ms']} | "
            f"{one['p50']} / {tail(one)} | {ten['p50']} / {tail(ten)} |"
        )
    return lines


def _pipeline_one_server_table(rows: list[dict[str, Any]]) -> list[str]:
    changes = [r[k] for r in rows for k in ("change_cpu_ms_1_groups", "change_cpu_ms_10_groups")]
    lines = [
        "",
        "A change costs the change, not the fleet's shape: one replica moved within ONE "
        "server of N replicas, CPU ms of the pipeline step that follows (watch event -> new "
        f"snapshots), N = {_n(changes)} changes, p50 / {tails_name(changes)}, with 1 node "
        "group and with 10 (10 Envoys, each its own "
        "listen address, sharing the same endpoints); 10 / 1 = ratio of the p50s",
        "| replicas in the server | change, 1 group | change, 10 groups | 10 / 1 |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        one, ten = row["change_cpu_ms_1_groups"], row["change_cpu_ms_10_groups"]
        lines.append(
            f"| {row['replicas']} | {one['p50']} / {tail(one)} | {ten['p50']} / "
            f"{tail(ten)} | {row.get('ten_groups_vs_one_p50', '-')}x |"
        )
    return lines


def _idle_load_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        f"The load view at rest: `serve` with {rows[0]['servers']:,} servers that all have "
        "autoscaling, one READY replica each, no proxy, nothing changing "
        "(`python -m bench.idle_load`). Group CPU from schedstat (ns) over "
        f"{rows[0]['window_s']:g} s; `/metrics`, `routeplane load --json` (the whole CLI, "
        "start-up included) and one GetLoad call: median of N = 3; WatchLoad: updates "
        "received in 10 s",
        "| workers | group CPU | /metrics bytes | /metrics s | routeplane load s | GetLoad s "
        "| WatchLoad updates / 10 s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['workers']} | {row['group_cpu_percent']}% | {row['metrics_bytes']:,} | "
            f"{row['metrics_s_median']} | {row['cli_load_s_median']} | "
            f"{row.get('get_load_s_median', row.get('get_load_error', '-'))} | "
            f"{row['watch_updates_per_10s']} |"
        )
    return lines


def _load_tables(load: dict[str, Any]) -> list[str]:
    """Aggregation (``_take`` alone), the whole process when measured, and the latency line."""
    latency = load["latency"]
    lines = [
        "",
        "Load reports. Aggregation: synthetic LRS reports (each cluster one locality, 10 "
        "endpoints) taken through the LRS stream's `_take` step on an already parsed "
        "message, then one tick (sums, recommendations): `_take` ONLY, it EXCLUDES parsing "
        "the report and gRPC, so the whole process spends more; CPU per report per "
        "cluster, and the share of one core projected from it for 1,000 proxies x 100 "
        "clusters reporting every second. Report -> recommendation: a real Envoy reporting "
        f"every {latency['interval_ms']:g} ms; {latency['held']} requests held open start "
        "at once, at a random phase of the report interval; the clock stops when WatchLoad "
        f"shows them all in flight (N = {latency['tries']} tries)",
        "| clusters with traffic | N: reports x clusters | CPU per report per cluster (_take "
        "only, excludes parsing and gRPC) | tick | projected share of a core (_take only) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for agg in load["aggregation"]:
        lines.append(
            f"| {agg['active_share']:.0%} | {agg['proxies']} x {agg['clusters']} | "
            f"{agg['cpu_us_per_report_per_cluster']} us | "
            f"{agg['tick_ms']} ms | {agg['projected_core_share_1000x100_at_1s']:.0%} |"
        )
    if load.get("whole_process", []):
        lines += _load_whole_process_table(load["whole_process"])
    lines.append(
        f"\nLoad step -> visible in WatchLoad (N = {latency['tries']} tries at random "
        f"phases): min {latency.get('min_ms', '-')} ms, p50 {latency['p50_ms']} ms, p90 "
        f"{latency.get('p90_ms', '-')} ms, max {latency['max_ms']} ms (report interval "
        f"{latency['interval_ms']:g} ms)"
    )
    return lines


def _load_whole_process_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "Load reports, the whole process: a simulated fleet (each proxy one connection "
        "with a delta ADS stream and an LRS stream under one node id; each cluster one "
        "locality, 10 endpoints) reports every second to `routeplane serve --workers 1`; "
        "the server's CPU (every thread, ns) over one window, less its rate with the same "
        "streams connected and not reporting: parsing, gRPC, `_take` and ticks "
        "together; reports taken: the server's own count over the window",
        "| clusters with traffic | proxies x clusters | window | reports sent / taken | "
        "server CPU while reporting | CPU per report per cluster (whole process) | "
        "projected share of a core for 1,000 x 100 at 1 s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['active_share']:.0%} | {row['proxies']} x {row['clusters']} | "
            f"{row['seconds']} s | {row['reports']} / {row['reports_taken']:g} | "
            f"{row['cpu_percent_reporting']}% | "
            f"{row['cpu_us_per_report_per_cluster']} us | "
            f"{row['projected_core_share_1000x100_at_1s']:.0%} |"
        )
    return lines


def _propagation_table(rows: list[dict[str, Any]], cold_start: dict[str, Any] | None) -> list[str]:
    """Commit -> first answer, per write and ADS, and the hold-mode cold start as a last row."""
    lines = [
        "",
        "Propagation, registry commit (its own commit timestamp) -> first request answered "
        "by the new replica (SQLite, 1 Envoy), ms; each try swaps the replica in service for "
        "another (deregister, wait for 503, register); cli: written by `routeplane replicas "
        "register` (a process per try), api: by the registry API in-process. Tail: the p99 "
        "from 200 tries or more, else the max of N. Envoy's own filesystem EDS, the floor, "
        "is in the next table, with the same change and clock as routeplane's there",
        "| write | ADS | N | p50 | p90 | p99 or max of N |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        for kind in ("api", "cli"):
            s = row[kind]
            lines.append(
                f"| {kind} | {row['ads']} | {s.get('n', '-')} | {s['p50_ms']} | {s['p90_ms']} | "
                f"{_tail_cell(s)} |"
            )
    if cold_start is not None:
        cold = cold_start["commit_to_held_answered"]
        lines.append(
            "| api, cold start in hold mode: commit -> the held request answered | delta | "
            f"{cold.get('n', cold_start['tries'])} | {cold['p50_ms']} | "
            f"{cold['p90_ms']} | {_tail_cell(cold)} |"
        )
    return lines


def _proxyless_table(proxyless: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Proxyless gRPC: registry commit (its own commit timestamp) -> first RPC answered by "
        "the new replica, for gRPC's own xDS client (xds:///, SotW ADS) and, for the same "
        "changes, a gRPC caller through an Envoy (delta ADS); SQLite, api writes, "
        f"N = {proxyless['tries']} tries, ms",
        f"| caller | p50 | p90 | {tails_name([proxyless['envoy']])} |",
        "| --- | --- | --- | --- |",
    ]
    for caller, label in (("proxyless", "proxyless gRPC client"), ("envoy", "via Envoy")):
        s = proxyless[caller]
        lines.append(f"| {label} | {s['p50_ms']} | {s['p90_ms']} | {tail(s)} |")
    return lines


def _registry_watch_table(rows: list[dict[str, Any]]) -> list[str]:
    acked = [row["commit_to_all_acked_ms"] for row in rows]
    lines = [
        "",
        "Registry commit -> control plane -> every Envoy ACKed (control plane in-process, real "
        f"Envoys, delta), ms (p50 / {tails_name(acked)}; N = {_n(acked)} changes "
        "per row). Clocks start at the registry's own commit timestamp "
        "(SQLite: written in the commit; Spanner: the commit timestamp): sees it = the pass "
        "that holds the change begins; all ACKed = the last Envoy's ACK of the new EDS is "
        "read. Pass CPU = the loop thread's CPU in that pass; process CPU = the whole "
        "process from the write call's return to the last ACK (watch read, pass, pushes, "
        "ACKs, and the benchmark's own waiting)",
        "| registry | replicas | envoys | sees it | all ACKed | pass CPU | process CPU | "
        "full read | full rebuild | snapshot bytes per group |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        seen, ack, cpu = (
            row[k]
            for k in ("commit_to_seen_ms", "commit_to_all_acked_ms", "reconcile_cpu_per_change_ms")
        )
        process = row.get("process_cpu_per_change_ms", {"p50": "-", "p99": "-"})
        lines.append(
            f"| {row['registry']} | {row['replicas']} | {row['envoys']} | "
            f"{seen['p50']} / {tail(seen)} | {ack['p50']} / {tail(ack)} | "
            f"{cpu['p50']} / {tail(cpu)} | {process['p50']} / {tail(process)} | "
            f"{row['full_read_ms']} | "
            f"{row['full_rebuild_ms']} | {row.get('snapshot_bytes_per_group', '-')} |"
        )
    return lines


def _idle_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "Idle cost: `routeplane serve` with no proxy and nothing changing in the registry, "
        "default watch (SQLite: woken by inotify, a safety poll every "
        f"{_poll_ms(rows, 'sqlite')} ms; Spanner: a poll every "
        f"{_poll_ms(rows, 'spanner')} ms); CPU over one quiet window of "
        f"{rows[0]['seconds']:g} s per row (N = 1 window) from the scheduler's "
        "nanosecond account of every thread (the whole process: watch, load-report ticks, "
        "timers), share of one core; for Spanner also the emulator's processes'; memory: "
        "the process's resident set at rest; vs smallest = CPU ms per second against the "
        "same registry with the fewest replicas, in the same run (idle should not grow with "
        "the registry)",
        "| registry | replicas | idle CPU | CPU ms per second | memory | emulator CPU | "
        "vs smallest |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    smallest: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r["replicas"]):
        smallest.setdefault(row["registry"], row["idle_cpu_ms_per_s"])
    for row in rows:
        emulator = row.get("emulator_cpu_percent")
        base = smallest[row["registry"]]
        vs = f"{row['idle_cpu_ms_per_s'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {row['registry']} | {row['replicas']} | {row['idle_cpu_percent']}% | "
            f"{row['idle_cpu_ms_per_s']} | {row.get('rss_mb', '-')} MB | "
            f"{'-' if emulator is None else f'{emulator}%'} | {vs} |"
        )
    return lines


def _fleet_table(rows: list[dict[str, Any]]) -> list[str]:
    """The simulated fleet at each size, then the reconnect storm: each against its floor."""
    lines = [
        "",
        "Simulated fleet (delta ADS streams over real gRPC, 100 servers / 1,000 replicas; the "
        "fleet in the benchmark's process, the server in its own). Each size runs twice in the "
        "same run: against the floor (`bench.floor`: a bare grpc.aio server pushing pre-encoded "
        "bytes of the same resources and reading the ACKs) and against `routeplane serve`; "
        "vs floor = routeplane / floor for CPU per stream per push, one change's p50 (never "
        "a ratio of two maxima), memory per stream. Errors: every stream that ended, over the "
        "whole run, with a status other than RESOURCE_EXHAUSTED before it had its whole "
        "config, and any end of a stream after it had it (in brackets; retried like Envoy), by "
        "code; refused: RESOURCE_EXHAUSTED before the whole config only (admission control), "
        "retried with backoff. One change: routeplane, the registry's commit timestamp (the "
        "floor: the push request) -> the last stream has written its ACK; N changes per row, "
        "p50 and max of N (under 200 changes: no p99). CPU per stream per push: the server "
        "process's CPU (every thread, ns) over the change window, less its idle rate, per "
        "stream",
        "| streams | server | reconnect storm: all served | errors (after complete) | refused, "
        "retried | /metrics during the storm, max | one change: N | all ACKed p50 / max ms | "
        "CPU per stream per push | memory per stream | idle CPU | vs floor: CPU / p50 / memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        floor = row.get("floor")
        if floor is not None:
            lines.append(_fleet_row(floor, "floor (bare grpc.aio)", "-"))
        ratios = row.get("vs_floor")
        vs = (
            " / ".join(
                "-" if ratios[k] is None else f"{ratios[k]}x"
                for k in (
                    "cpu_per_stream_per_push",
                    "fanout_p50",
                    "memory_per_stream",
                )
            )
            if ratios
            else "-"
        )
        lines.append(_fleet_row(row, "routeplane", vs))
    return lines


def _dataplane_table(dp: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Data plane: HTTP/1.1 and gRPC at a fixed {dp['rate_per_s']:g} requests/s (open "
        f"loop), WebSocket round trips one at a time on one connection (closed loop); "
        f"{dp['seconds']:g} s per target in 5 interleaved rounds (WebSocket: at least 200 "
        "round trips a round). Latency in ms over all rounds, N = answers; p99 from 200 "
        "answers or more, p99.9 from 2,000 or more ('-' under); errors: failed requests, "
        "failed or wrong WebSocket round trips (each reconnects); ratio against the static "
        "Envoy = median of the 5 per-round ratios [min-max] (p99 ratios from rounds of 200 "
        "answers or more only); Envoy CPU: the Envoy's CPU (every thread, ns) over the rounds "
        "per request sent at this rate, idle work included",
        "| protocol | target | N | p50 | p99 | p99.9 | errors | p50 ratio | p99 ratio | Envoy "
        "CPU per request |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in dp["rows"]:
        cpu = row.get("envoy_cpu_us_per_request")
        lines.append(
            f"| {row['protocol']} | {row['target']} | {row.get('requests', '-')} | "
            f"{row['p50_ms']} | {_dash(row['p99_ms'])} | {_dash(row['p999_ms'])} | "
            f"{row['errors']} | {row['vs_static_p50']} {_spread(row, 'p50')} | "
            f"{_dash(row['vs_static_p99'])} {_spread(row, 'p99')} | "
            f"{'-' if cpu is None else f'{cpu} us'} |"
        )
    return lines


def _n(summaries: list[dict[str, Any]]) -> str:
    """The sample counts of several summaries: "200", or "20-200" when they differ."""
    counts = sorted({int(s.get("n", 0)) for s in summaries})
    if not counts:
        return "-"
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def _tail_cell(summary: dict[str, Any]) -> str:
    """A p99, or "X (max of N)" when there were too few samples for one."""
    value = tail(summary)
    n = summary.get("n")
    return str(value) if n is None or n >= MIN_FOR_P99 else f"{value} (max of {n})"


def _poll_ms(rows: list[dict[str, Any]], registry: str) -> str:
    found = {
        float(row["poll_interval_ms"])
        for row in rows
        if row["registry"] == registry and row.get("poll_interval_ms") is not None
    }
    return "/".join(f"{ms:g}" for ms in sorted(found)) if found else "-"


def _fleet_row(row: dict[str, Any], server: str, vs: str) -> str:
    admin = (
        f"{row['admin_during_storm_max_ms']} ms" if row.get("admin_during_storm_max_ms") else "-"
    )
    fanout = row["fanout_ms"]
    late = _codes(row.get("late_error_codes", {}))
    return (
        f"| {row['streams']} | {server} | {row['storm_s']} s | {row['storm_errors']}"
        f"{_codes(row.get('storm_error_codes', {}))} ({row.get('late_errors', '-')}{late}) | "
        f"{row.get('storm_refusals_retried', '-')} | {admin} | {fanout.get('n', '-')} | "
        f"{fanout['p50']} / {fanout.get('max', fanout.get('p99'))} | "
        f"{row['cpu_us_per_stream_per_push']} us | {row['rss_per_stream_kb']} KB | "
        f"{row['idle_cpu_percent']}% | {vs} |"
    )


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _spread(row: dict[str, Any], which: str) -> str:
    low_high = row.get(f"vs_static_{which}_spread")
    return f"[{low_high[0]}-{low_high[1]}]" if low_high else ""


def _codes(codes: dict[str, int]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(codes.items()))})" if codes else ""
