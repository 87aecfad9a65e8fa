#!/usr/bin/env python3
"""Turns the figures bench/run gathered into one table, prints it and appends
it to bench/RESULTS.md with the date and the machine.

Usage: report.py MODE FIGURES STORE RESULTS SETTINGS

FIGURES holds one line per figure, `name value...`; the wrk lines carry
key=value pairs from bench/post.lua. Latencies from accept to delivery come
from the relay's own store: a job's finished_at (when GitHub answered) minus
its delivery's received_at.
"""

import datetime
import os
import platform
import sqlite3
import subprocess
import sys


def pairs(text):
    out = {}
    tokens = text.split()
    for i, token in enumerate(tokens):
        if "=" in token:
            k, v = token.split("=", 1)
            out[k] = float(v)
        elif i + 1 < len(tokens) and "=" not in tokens[i + 1]:
            # "count 12 first_ms 34" style, from the fake's statistics.
            try:
                out[token] = float(tokens[i + 1])
            except ValueError:
                pass
    return out


def load(path):
    figures = {}
    for line in open(path):
        name, _, rest = line.strip().partition(" ")
        figures[name] = rest
    return figures


def rate(wrk):
    ok = wrk["requests"] - wrk["status_errors"]
    return ok / (wrk["duration_us"] / 1e6)


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def store_figures(store):
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    latencies = sorted(
        row[0]
        for row in db.execute(
            "SELECT j.finished_at - d.received_at FROM jobs j JOIN deliveries d ON d.id = j.delivery_id"
            " WHERE j.status = 'delivered'"
        )
    )
    by_status = dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    deliveries, first, last = db.execute(
        "SELECT count(*), min(received_at), max(received_at) FROM deliveries"
    ).fetchone()
    return latencies, by_status, deliveries, first, last


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"nproc {os.cpu_count()}, {cpu}, kernel {platform.release()}, commit {commit}"


def writer_line(f, wrk):
    """The store writer's share of the relay's run, from its commit
    histograms read before and after it; runs from before the relay had
    them lack it."""
    if "relay_paced_commits_after" not in f:
        return []
    before, after = pairs(f["relay_paced_commits_before"]), pairs(f["relay_paced_commits_after"])
    commits = after["commits"] - before["commits"]
    seconds = after["seconds"] - before["seconds"]
    commands = after["commands"] - before["commands"]
    if commits <= 0:
        return []
    span_s = wrk["duration_us"] / 1e6
    return [
        "",
        f"Store writer during that run: {commits / span_s:,.0f} commits/s holding {commands / commits:.1f} writes each,"
        f" {seconds / commits * 1000:.2f} ms per commit (the disk's flush included), busy {seconds / span_s:.0%} of the time.",
    ]


def intake_line(f):
    """Whether the reference writing the relay's rows after its answer kept
    up: how many inbox rows it had not moved into the relay's rows when it
    was stopped, right after wrk."""
    if "reference_intake_left" not in f:
        return []
    return [
        "",
        f"Inbox rows the after-the-answer reference had not yet moved when wrk stopped: {int(f['reference_intake_left']):,}.",
    ]


def mb(kb):
    return f"{float(kb) / 1024:.1f} MB"


def main():
    mode, figures_path, store, results, settings = sys.argv[1:6]
    f = load(figures_path)
    fake = pairs(f.get("fake", ""))
    latencies, by_status, deliveries, first_rx, last_rx = store_figures(store)
    accepted = int(f.get("relay_accepted", "0"))
    delivered = int(fake.get("count", 0))
    span_s = max((fake.get("last_ms", 0) - fake.get("first_ms", 0)) / 1000, 1e-3)
    lines = []
    if mode == "load":
        ceiling, relay = pairs(f["ceiling"]), pairs(f["relay"])
        paced = pairs(f["relay_paced"])
        one, rows = pairs(f["reference_one"]), pairs(f["reference_relay"])
        c_rate, p_rate = rate(ceiling), rate(paced)
        g_rate, gr_rate = rate(one), rate(rows)

        def row(label, wrk, rss_kb, written=None, bold=False):
            ratio = f"{rate(wrk) / c_rate:.2f}"
            ratio = f"**{ratio}**" if bold else ratio
            per_webhook = (
                f"{float(written) / max(rate(wrk) * wrk['duration_us'] / 1e6, 1) / 1024:.1f} KiB"
                if written
                else "—"
            )
            return (
                f"| {label} | {rate(wrk):,.0f} | {wrk['p50_us'] / 1000:.2f} ms | {wrk['p99_us'] / 1000:.2f} ms"
                f" | {ratio} | {mb(rss_kb)} | {per_webhook} | {wrk['status_errors']:.0f} |"
            )

        lines += [
            "| server | accepted req/s | p50 | p99 | × ceiling | peak RSS | written per webhook | non-2xx |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            row("ceiling (actix-web, read body, 202)", ceiling, f["ceiling_rss_kb"]),
        ]
        # Runs from before the reference stopped short of its commit lack
        # these two rows.
        if "reference_render" in f:
            lines += [
                row(
                    "reference stopping after render (HMAC, parse, when, render; nothing stored)",
                    pairs(f["reference_render"]),
                    f["reference_render_rss_kb"],
                ),
                row(
                    "reference stopping after handing each request to its writer (nothing stored)",
                    pairs(f["reference_handoff"]),
                    f["reference_handoff_rss_kb"],
                ),
            ]
        lines += [
            row(
                "durable reference (HMAC, parse, when, render, group commit of one row)",
                one,
                f["reference_one_rss_kb"],
                f.get("reference_one_written"),
            ),
            row(
                "durable reference writing the relay's rows (delivery and job, relay schema)",
                rows,
                f["reference_relay_rss_kb"],
                f.get("reference_relay_written"),
            ),
        ]
        # Runs from before the reference could build the relay's rows after
        # its answer lack this row.
        if "reference_intake" in f:
            lines.append(
                row(
                    "durable reference writing the relay's rows after the answer (one inbox row before it, moved when idle)",
                    pairs(f["reference_intake"]),
                    f["reference_intake_rss_kb"],
                    f.get("reference_intake_written"),
                )
            )
        lines += [
            row(
                "relay, default pacing (HMAC, parse, when, render, durable commit)",
                paced,
                f["relay_paced_rss_kb"],
                f.get("relay_paced_written"),
                bold=True,
            ),
            row(
                "relay, pacing off (the same while delivering to the fake GitHub)",
                relay,
                f["relay_rss_kb"],
                bold=True,
            ),
            "",
            f"Relay (default pacing) against the durable reference: {p_rate / g_rate:.2f}× of the one-row reference,"
            f" {p_rate / gr_rate:.2f}× of the reference writing the relay's rows.",
            *intake_line(f),
            *writer_line(f, paced),
            "",
            "| end to end (pacing off, fake GitHub) | |",
            "|---|---:|",
            f"| webhooks accepted (relay metric) | {accepted:,} |",
            f"| dispatches delivered to the fake | {delivered:,} |",
            f"| dispatches/s delivered (first to last arrival) | {delivered / span_s:,.0f} |",
            f"| accept→delivered p50 / p99 | {percentile(latencies, 50):.0f} ms / {percentile(latencies, 99):.0f} ms |",
            f"| fake GitHub violations | {fake.get('violations', 0):.0f} |",
        ]
    else:
        burst = pairs(f["burst"])
        rx_span = max(((last_rx or 0) - (first_rx or 0)) / 1000, 1e-3)
        lost = accepted - by_status.get("delivered", 0)
        ok = (
            lost == 0
            and delivered >= accepted
            and burst["other"] == 0
            and burst["accepted"] <= accepted
        )
        lines += [
            "| burst | |",
            "|---|---:|",
            f"| answers seen by wrk: 202 / 503+429 / other / socket errors | {burst['accepted']:,.0f} / {burst['refused']:,.0f}"
            f" / {burst['other']:,.0f} / {burst['socket_errors']:,.0f} |",
            f"| webhooks accepted (relay metric) | {accepted:,} |",
            f"| accept rate (store: first to last received_at) | {deliveries / rx_span:,.0f}/s |",
            f"| queue depth right after the burst | {f.get('queue_after_burst', '?')} |",
            f"| dispatches delivered to the fake | {delivered:,} |",
            f"| jobs by status in the store | {by_status} |",
            f"| dispatches/s delivered (first to last arrival) | {delivered / span_s:,.0f} |",
            f"| accept→delivered p50 / p99 | {percentile(latencies, 50):,.0f} ms / {percentile(latencies, 99):,.0f} ms |",
            f"| relay peak RSS (VmHWM at the end / highest 200 ms sample) | {mb(f['relay_rss_kb'])} / {mb(f.get('rss_samples_kb', 0))} |",
            f"| store size on disk | {int(f.get('db_bytes', 0)) / 1e6:.1f} MB |",
            f"| fake GitHub violations | {fake.get('violations', 0):.0f} |",
            f"| every 202 delivered | **{'yes' if ok else 'NO'}** |",
        ]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    probe = f"host probe {f.get('probe_before_ms', '?')}/{f.get('probe_after_ms', '?')} ms before/after"
    header = [
        f"## {now} — bench/run {'' if mode == 'load' else 'burst'}".rstrip(),
        "",
        f"{machine()}; {settings}; {probe}",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    new = not os.path.exists(results)
    with open(results, "a") as out:
        if new:
            out.write("# Benchmark results\n\nAppended by `bench/run`; see bench/README.md.\n\n")
        out.write(text + "\n")


if __name__ == "__main__":
    main()
