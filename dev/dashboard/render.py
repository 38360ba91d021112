#!/usr/bin/env python3
"""Render floe's Grafana dashboard to a PNG from scraped /metrics text, without Grafana.

  render.py scrape --url http://127.0.0.1:9464/metrics --interval 2 [--duration S] --out scrapes.jsonl
  render.py render --scrapes scrapes.jsonl [--dashboard ...] [--out ...] [--title ...]
  render.py selftest [--out /tmp/dash-selftest.png]

The dashboard's own PromQL is evaluated at every scrape timestamp by a small evaluator
for the subset the dashboard uses; see dev/dashboard/README.md.
"""
from __future__ import annotations

import argparse
import gzip
import http.client
import json
import math
import re
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from promql import (  # noqa: E402  (the module beside this script)
    INF, NAN, Evaluator, Parser, PromQLError, Timeline, is_cumulative, note, parse_exposition,
)

REPO = Path(__file__).resolve().parents[2]


def open_text(path, mode):
    return gzip.open(path, mode + "t", encoding="utf-8") if str(path).endswith(".gz") \
        else open(path, mode, encoding="utf-8")


# ----------------------------------------------------------------- value formatting

def num(v):
    a = abs(v)
    s = f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 \
        else "0" if a == 0 else f"{v:.3g}" if a >= 1e-3 else f"{v:.1e}"
    return s.rstrip("0").rstrip(".") if "." in s and "e" not in s else s


def scaled(v, suffix=""):
    """Grafana's count scaling (short, ops, reqps): 1.2 K, 3.4 Mil, 5 Bil."""
    for factor, prefix in ((1e12, " Tri"), (1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if abs(v) >= factor:
            return num(v / factor) + prefix + suffix
    return num(v) + (" " + suffix.strip() if suffix else "")


def fmt_value(v, unit):
    if v is None or math.isnan(v):
        return "No data" if v is None else "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    unit = unit or "short"
    if unit == "percentunit":
        return num(v * 100) + "%"
    if unit == "percent":
        return num(v) + "%"
    if unit in ("s", "ms"):
        s, a = (v / 1000 if unit == "ms" else v), abs(v / 1000 if unit == "ms" else v)
        for limit, div, name in ((1e-6, 1e-9, "ns"), (1e-3, 1e-6, "µs"), (1, 1e-3, "ms"),
                                 (60, 1, "s"), (3600, 60, "min"), (86400, 3600, "hour")):
            if a < limit:
                return "0 s" if a == 0 else f"{num(s / div)} {name}"
        return f"{num(s / 86400)} day"
    if unit in ("bytes", "decbytes"):
        base, names = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if unit == "bytes" \
            else (1000, ("B", "kB", "MB", "GB", "TB"))
        for k, name in reversed(list(enumerate(names))):
            if abs(v) >= base ** k or k == 0:
                return f"{num(v / base ** k)} {name}"
    suffix = {"ops": " ops/s", "reqps": " req/s", "rps": " rd/s", "wps": " wr/s", "iops": " io/s",
              "short": "", "none": ""}.get(unit)
    return scaled(v, suffix) if suffix is not None else f"{num(v)} {unit}"


# ----------------------------------------------------------------- rendering

BG, PANEL, BORDER, TEXT, DIM = "#111217", "#181b1f", "#2c3036", "#ccccdc", "#8e8ea0"
PALETTE = ["#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9",
           "#705DA0", "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C"]
NAMED = {"green": "#73BF69", "red": "#F2495C", "yellow": "#FADE2A", "orange": "#FF9830",
         "blue": "#5794F2", "purple": "#B877D9", "text": TEXT}
# Grafana's default thresholds when a panel sets none: green, red from 80.
DEFAULT_STEPS = [{"color": "green", "value": None}, {"color": "red", "value": 80}]


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        sys.exit("matplotlib is needed to render: pip install matplotlib\n"
                 "  e.g. python3 -m venv /tmp/dashvenv && /tmp/dashvenv/bin/pip install matplotlib\n"
                 "  then run this script with /tmp/dashvenv/bin/python")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def legend_name(fmt, labels, expr):
    d = dict(labels)
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: d.get(m.group(1), ""), fmt)
    name = d.pop("__name__", "")
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in d.items()) + "}" if d or name else expr


def time_ticks(t0, t1, max_ticks):
    span = max(t1 - t0, 1)
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
    step = next((s for s in steps if span / s <= max_ticks), 86400)
    off = time.localtime(t0).tm_gmtoff  # align ticks on local wall-clock boundaries
    first = math.ceil((t0 + off) / step) * step - off
    ticks = [first + k * step for k in range(int((t1 - first) // step) + 1)]
    return ticks, ("%H:%M:%S" if step < 60 else "%H:%M")


def with_gaps(times, values, gap):
    """x/y lists with a NaN break where scrapes are missing (floe down), as Grafana does."""
    xs, ys = [], []
    for j, (t, v) in enumerate(zip(times, values)):
        if j and t - times[j - 1] > gap:
            xs.append(t)
            ys.append(NAN)
        xs.append(t)
        ys.append(v if math.isfinite(v) else NAN)
    return xs, ys


def render(dashboard, tl, out, title=None):
    plt = import_pyplot()
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    panels = dashboard.get("panels", [])
    W, COL, ROW, TOP = 1800, 75, 38, 62  # 24 columns; a Grafana height unit is 30 px + 8 px margin
    H = TOP + max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=1) * ROW + 8
    fig = plt.figure(figsize=(W / 100, H / 100), dpi=100, facecolor=BG)

    def rect(x, y, w, h):  # pixels from the top left -> figure fractions
        return [x / W, 1 - (y + h) / H, w / W, h / H]

    def text(x, y, s, **kw):
        kw.setdefault("color", TEXT)
        return fig.text(x / W, 1 - y / H, s, **kw)

    renderer = fig.canvas.get_renderer()

    def width(s, size, weight="normal"):  # of a text in pixels
        return renderer.get_text_width_height_descent(s, FontProperties(size=size, weight=weight), False)[0]

    times, ev = tl.times, Evaluator(tl)
    t0, t1 = times[0], max(times[-1], times[0] + 1)
    dts = sorted(b - a for a, b in zip(times, times[1:]))
    step = dts[len(dts) // 2] if dts else 1.0
    text(16, 24, title or dashboard.get("title", "dashboard"), fontsize=17, weight="bold", va="center")
    text(16, 48, "job = All   ·   every panel's own PromQL evaluated over scrapes of /metrics",
         fontsize=9, color=DIM, va="center")
    text(W - 16, 24, f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t0))} → "
         f"{time.strftime('%H:%M:%S', time.localtime(times[-1]))}", fontsize=11, ha="right", va="center")
    span = times[-1] - t0
    span = f"{num(span)} s" if span < 120 else f"{num(span / 60)} min" if span < 7200 else f"{num(span / 3600)} h"
    text(W - 16, 48, f"{len(times)} scrapes, every ~{num(step)} s over {span}",
         fontsize=9, color=DIM, ha="right", va="center")
    ticks, tick_fmt = time_ticks(t0, t1, 8)

    for p in panels:
        g = p["gridPos"]
        x, y, w, h = g["x"] * COL + 4, TOP + g["y"] * ROW + 4, g["w"] * COL - 8, g["h"] * ROW - 8
        box = fig.add_axes(rect(x, y, w, h), facecolor=PANEL)
        box.set_xticks([])
        box.set_yticks([])
        for spine in box.spines.values():
            spine.set_color(BORDER)
        text(x + 10, y + 15, p.get("title", ""), fontsize=10.5, weight="bold", va="center")
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit")
        # A query's own unit (an override matched by its refId) puts it on a right axis.
        own_unit = {}
        for o in p.get("fieldConfig", {}).get("overrides", []):
            if o.get("matcher", {}).get("id") == "byFrameRefID":
                for prop in o.get("properties", []):
                    if prop.get("id") == "unit":
                        own_unit[o["matcher"].get("options")] = prop.get("value")
        series = []  # (legend, values per scrape, unit of a right axis or None)
        for target in p.get("targets", []):
            if target.get("hide") or not target.get("expr"):
                continue
            try:
                result = ev.query(target["expr"])
            except PromQLError as e:
                raise PromQLError(f"panel {p.get('title')!r}: {e}") from None
            for labels, values in result.items():
                series.append((legend_name(target.get("legendFormat"), labels, target["expr"]),
                               values, own_unit.get(target.get("refId"))))
        has_data = any(math.isfinite(v) for _, vs, _ in series for v in vs)
        kind = p.get("type")
        if kind not in ("stat", "timeseries"):
            text(x + w / 2, y + h / 2, f"panel type {kind!r} not rendered", color=DIM, ha="center")
            continue
        if not has_data:
            text(x + w / 2, y + h / 2 + 8, "No data", fontsize=14, color=DIM, ha="center", va="center")
            continue

        if kind == "stat":
            steps = defaults.get("thresholds", {}).get("steps") or DEFAULT_STEPS
            cw = w / len(series)
            for n, (name, values, _) in enumerate(series):
                finite = [v for v in values if math.isfinite(v)]
                last = finite[-1] if finite else None  # reduceOptions lastNotNull
                color, label = NAMED["green"], fmt_value(last, unit)
                for s in steps:
                    if s.get("value") is None or (last is not None and last >= s["value"]):
                        color = NAMED.get(s.get("color"), s.get("color"))
                for m in defaults.get("mappings", []):  # value mappings: {"0": {"text": ..}}
                    hit = m.get("options", {}).get(num(last)) if m.get("type") == "value" and last is not None else None
                    if hit:
                        label = hit.get("text", label)
                        color = NAMED.get(hit.get("color"), hit.get("color") or color)
                if p.get("options", {}).get("graphMode", "area") != "none" and len(finite) > 1:
                    spark = fig.add_axes(rect(x + n * cw + 1, y + h * 0.55, cw - 2, h * 0.45 - 1))
                    spark.axis("off")
                    xs, ys = with_gaps(times, values, 3 * step)
                    spark.fill_between(xs, ys, min(0, min(finite)), color=color, alpha=0.15, lw=0)
                    spark.plot(xs, ys, color=color, alpha=0.7, lw=1)
                    spark.set_xlim(t0, t1)
                size = min(h * 0.30 * 0.72, 10 * 0.85 * cw / width(label, 10, "bold"))  # pt
                text(x + n * cw + cw / 2, y + h * 0.56, label, fontsize=size, weight="bold",
                     color=color, ha="center", va="center", zorder=5)
                if len(series) > 1:
                    text(x + n * cw + cw / 2, y + h * 0.84, name, fontsize=8, color=DIM, ha="center")
            continue

        # timeseries: legend entries flow in rows under the plot (placement bottom)
        rows, row, used = [], [], 0
        for n, (name, _, _) in enumerate(series):
            wide = 34 + width(name, 8.5)
            if row and used + wide > w - 20:
                rows.append(row)
                row, used = [], 0
            row.append((n, name, wide))
            used += wide
        rows.append(row)
        max_rows = max(1, int(h * 0.3 // 16))
        hidden = sum(len(r) for r in rows[max_rows:])
        rows = rows[:max_rows]
        legend_h = 16 * len(rows) + 4
        left, top = x + 78, y + 30
        right_units = sorted({u for _, _, u in series if u})
        right_w = 70 if right_units else 0
        ax = fig.add_axes(rect(left, top, x + w - 14 - right_w - left, y + h - 24 - legend_h - top))
        ax.set_facecolor("none")
        axes = {None: (ax, unit)}
        if right_units:
            # One right axis, in the first override's unit (the dashboard uses one).
            twin = ax.twinx()
            axes.update({u: (twin, right_units[0]) for u in right_units})
        for n, (name, values, own) in enumerate(series):
            xs, ys = with_gaps(times, values, 3 * step)
            points = sum(math.isfinite(v) for v in values)
            axes[own][0].plot(xs, ys, color=PALETTE[n % len(PALETTE)], lw=1.3,
                              marker="o" if points < 30 else None, ms=2.5)
        ax.set_xlim(t0, t1)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: time.strftime(tick_fmt, time.localtime(v))))
        for own, (a, u) in axes.items():
            finite = [v for _, vs, o in series if (o is None) == (own is None) for v in vs
                      if math.isfinite(v)]
            if finite and min(finite) >= 0:
                hi = max(finite)
                a.set_ylim(0, hi * 1.08 if hi > 0 else 1)
            a.yaxis.set_major_locator(MaxNLocator(5))
            a.yaxis.set_major_formatter(FuncFormatter(lambda v, _, u=u: fmt_value(v, u)))
            a.tick_params(colors=DIM, labelsize=8, length=0, pad=4)
            for spine in a.spines.values():
                spine.set_visible(False)
        ax.grid(color=BORDER, lw=0.8)
        for r, entries in enumerate(rows):
            ly, lx = y + h - legend_h + 16 * r + 6, x + 12
            for n, name, wide in entries:
                fig.add_artist(Rectangle(((lx) / W, 1 - (ly + 1.5) / H), 14 / W, 3 / H,
                                         color=PALETTE[n % len(PALETTE)], transform=fig.transFigure))
                text(lx + 19, ly, name, fontsize=8.5, va="center")
                lx += wide
        if hidden:
            text(x + w - 10, y + h - 8, f"+{hidden} more series", fontsize=8, color=DIM, ha="right")

    fig.savefig(out, facecolor=BG)
    plt.close(fig)


# ----------------------------------------------------------------- commands

def cmd_scrape(a):
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _: stop.append(s))
    start = time.time()
    deadline = start + a.duration if a.duration else INF
    ok = failed = streak = k = 0
    with open_text(a.out, "a") as out:
        while not stop and time.time() < deadline:
            t = time.time()
            try:
                with urllib.request.urlopen(a.url, timeout=max(a.interval, 5)) as r:
                    body = r.read().decode("utf-8")
            except (OSError, http.client.HTTPException) as e:
                failed, streak = failed + 1, streak + 1
                if streak == 1:  # one note per outage, not one per attempt
                    note(f"scrape {a.url} failed, skipped ({getattr(e, 'reason', e)}); retrying every {a.interval} s")
            else:
                if streak:
                    note(f"scrape {a.url} answers again after {streak} failed attempt(s)")
                streak, ok = 0, ok + 1
                out.write(json.dumps({"t": t, "text": body}) + "\n")
                out.flush()
            k += 1
            while start + k * a.interval <= time.time():  # fell behind: skip missed slots
                k += 1
            while not stop and time.time() < min(start + k * a.interval, deadline):
                time.sleep(0.1)
    note(f"{ok} scrape(s) appended to {a.out}, {failed} failed")


def load_scrapes(path):
    scrapes = []
    with open_text(path, "r") as f:
        try:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                        scrapes.append((float(rec["t"]), rec["text"]))
                    except (ValueError, KeyError, TypeError) as e:  # e.g. a line cut by kill -9
                        note(f"{path}:{n}: skipped ({e})")
        except EOFError:  # a .gz whose writer was killed: keep what was read
            note(f"{path}: truncated after {len(scrapes)} scrapes")
    return scrapes


def cmd_render(a):
    dashboard = json.loads(Path(a.dashboard).read_text())
    try:
        tl = Timeline(load_scrapes(a.scrapes), zero_fill=not a.no_zero_fill)
    except ValueError as e:
        sys.exit(f"{a.scrapes}: {e}")
    render(dashboard, tl, a.out, a.title)
    note(f"rendered {len(dashboard.get('panels', []))} panels over {len(tl.times)} scrapes -> {a.out}")


def synthetic_scrapes(n=91, step=10.0, t0=1_700_000_000.0):
    """Exposition texts shaped like floe's (prometheus crate output, no scope labels)."""
    out = []
    for i in range(n):
        lines = []

        def line(name, labels, v):
            body = ",".join(f'{k}="{val}"' for k, val in labels.items())
            lines.append(f"{name}{{{body}}} {v}" if body else f"{name} {v}")

        def metric(name, kind, samples):
            lines.append(f"# HELP {name} synthetic\n# TYPE {name} {kind}")
            for labels, v in samples:
                line(name, labels, v)

        def histogram(name, labels, bounds, per_step, sum_per_step):
            """per_step: observations added per scrape to each bucket, +Inf's last."""
            lines.append(f"# TYPE {name} histogram")
            cum = 0
            for le, c in zip(bounds + ["+Inf"], per_step):
                cum += c
                line(f"{name}_bucket", {**labels, "le": le}, cum * i)
            line(f"{name}_sum", labels, sum_per_step * i)
            line(f"{name}_count", labels, cum * i)

        metric("floe_events_consumed_total", "counter", [({}, 100 * i)])
        metric("floe_rows_loaded_total", "counter", [
            ({"op": "insert", "table": "A"}, 50 * i if i < 4 else 50 * (i - 3)),  # reset at i=4
            ({"op": "update", "table": "A"}, 10 * i), ({"op": "update", "table": "B"}, 20 * i)])
        metric("floe_warehouse_statements_total", "counter", [({"kind": "merge"}, i)])
        metric("floe_consumer_lag", "gauge", [({"partition": "0", "topic": "t"}, 100 + i),
                                              ({"partition": "1", "topic": "t"}, 50)])
        metric("floe_freshness_seconds", "gauge", [({"table": "A"}, 2 + i % 7), ({"table": "B"}, 5)])
        metric("floe_breaker_state", "gauge", [({"breaker": "warehouse"}, int(30 <= i < 40)),
                                               ({"breaker": "broker"}, 0)])
        if i >= 5:  # appears at its first increment, like an OpenTelemetry counter
            drops = 3 + max(0, i - 60)
            metric("floe_events_dropped_total", "counter", [({"category": "validation", "stage": "validate"}, drops)])
            metric("floe_dead_letters_written_total", "counter", [({}, drops)])
        metric("floe_load_retries_total", "counter", [({}, i // 10)])
        metric("floe_broker_errors_total", "counter", [({"operation": "fetch"}, i // 20)])
        metric("floe_schema_changes_total", "counter", [({"change": "table_created"}, 2 if i else 0)])
        metric("floe_components_reloads_total", "counter", [({"outcome": "ok"}, i // 30)])
        metric("floe_telemetry_exports_failed_total", "counter", [({"signal": "metrics"}, i // 45)])
        histogram("floe_batch_duration_seconds", {}, [0.1, 0.5, 1], [2, 6, 2, 0], 3.0)
        histogram("floe_load_duration_seconds", {}, [0.5, 2.5], [0, 0, 5], 20.0)  # all in +Inf
        histogram("floe_components_duration_seconds", {}, [0.01, 0.05, 0.1], [5, 4, 1, 0], 0.2)
        for op, per in (("merge", [1, 6, 3, 0]), ("create", [4, 1, 0, 0])):
            histogram("db_client_operation_duration_seconds", {"db_operation_name": op, "status": "ok"},
                      [0.05, 0.25, 1], per, 1.0)
        for kind, name in (("validate-and-transform", "builtin-transformer"),
                           ("build-merge", "builtin-merge_builder")):
            c = {"floe_component_kind": kind, "floe_component_name": name}
            histogram("floe_component_call_duration_seconds", c, [0.005, 0.05], [3, 6, 1], 0.2)
            histogram("floe_component_memory_peak_bytes", c, [1048576, 4194304], [2, 8, 0], 3e7)
            histogram("floe_component_fuel", c, [1e6, 1e7], [1, 9, 0], 6e7)
        out.append((t0 + i * step, "\n".join(lines) + "\n"))
    return out


def cmd_selftest(a):
    samples, types = parse_exposition(
        '# TYPE x counter\nx_total{a="we\\"ird",b="c\\\\d\\n"} 3 1700000000000\ny +Inf\nz NaN\n')
    assert samples[(("__name__", "x_total"), ("a", 'we"ird'), ("b", "c\\d\n"))] == 3.0, samples
    assert types == {"x": "counter"} and is_cumulative("x_total", types) and not is_cumulative("y", types)
    assert samples[(("__name__", "y"),)] == INF

    scrapes = synthetic_scrapes()
    ev, strict = Evaluator(Timeline(scrapes)), Evaluator(Timeline(scrapes, zero_fill=False))

    def at(expr, i, e=ev):
        r = e.eval(Parser(expr).parse(), i)
        return {(): r} if isinstance(r, float) else r

    def close(got, want):
        assert got.keys() == want.keys() and all(abs(got[k] - v) < 1e-9 for k, v in want.items()), (got, want)

    j = '{job=~"$job"}'
    close(at(f"sum(rate(floe_events_consumed_total{j}[1m]))", 7), {(): 10.0})  # 100 per 10 s
    close(at(f"sum(rate(floe_events_consumed_total{j}[1m]))", 2), {(): 10.0})  # window cut at 1st scrape
    close(at('increase(floe_rows_loaded_total{table="A",op="insert"}[1m])', 7),  # across the reset
          {(("op", "insert"), ("table", "A")): 300.0})
    close(at("sum by (table) (rate(floe_rows_loaded_total[1m]))", 7), {(("table", "A"),): 6.0, (("table", "B"),): 2.0})
    close(at("sum(rate(floe_rows_loaded_total[1m])) by (op)", 7), {(("op", "insert"),): 5.0, (("op", "update"),): 3.0})
    close(at(f"sum(floe_consumer_lag{j})", 5), {(): 155.0})
    close(at(f"max(floe_freshness_seconds{j})", 5), {(): 7.0})
    close(at('sum(floe_consumer_lag{partition!="1",topic=~"t|u"})', 5), {(): 105.0})
    assert at('floe_consumer_lag{partition=~"1"}', 5) and not at('floe_consumer_lag{partition=~"1."}', 5)
    q = "histogram_quantile({}, sum by (le) (rate(floe_{}_duration_seconds_bucket[5m])))"
    close(at(q.format(0.5, "batch"), 50), {(): 0.3})    # rank 5 of 10: 0.1 + 0.4 * 3/6
    close(at(q.format(0.99, "batch"), 50), {(): 0.975})  # rank 9.9: 0.5 + 0.5 * 1.9/2
    close(at(q.format(0.99, "load"), 50), {(): 2.5})     # in +Inf: the highest finite bound
    close(at("histogram_quantile(0.9, sum by (le, db_operation_name) (rate(db_client_operation_duration_seconds_bucket[5m])))", 50),
          {(("db_operation_name", "create"),): 0.05 + 0.2 * 0.5, (("db_operation_name", "merge"),): 0.25 + 0.75 * 2 / 3})
    close(at("1000 * sum(rate(floe_warehouse_statements_total[5m])) / sum(rate(floe_events_consumed_total[5m]))", 50), {(): 10.0})
    breakers = f"sum(floe_breaker_state{j} > 0) or vector(0)"
    close(at(breakers, 35), {(): 1.0})
    close(at(breakers, 10), {(): 0.0})
    dropped = "sum(increase(floe_events_dropped_total[5m]))"
    close(at(dropped, 12), {(): 3.0})               # first appearance counted from 0
    close(at(dropped, 12, strict), {(): 0.0})       # what Prometheus itself would show
    close(at("-floe_consumer_lag{partition='1'} + 2 * 3", 5), {(("partition", "1"), ("topic", "t")): -44.0})
    for bad in ("topk(3, floe_consumer_lag)", "sum without (le) (x)", "rate(x[5m:1m])", "rate(x)",
                "a and b", "x > bool 0", "x offset 5m", "x[5m]", "sum(", "x{a=~b}", "x ^ 2", 'x{a=~"("}'):
        try:
            Evaluator(Timeline(scrapes[:2])).query(bad)
        except PromQLError as e:
            assert bad in str(e), e
        else:
            raise AssertionError(f"{bad!r} should be rejected")
    print("evaluator: parser, rate/increase (reset, cut window, zero fill), aggregations,"
          " histogram_quantile, arithmetic, filter, or vector(0): ok")

    dashboard = json.loads((REPO / "docs/grafana/floe-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for expr in exprs:  # every dashboard query parses and yields data on the synthetic run
        assert any(math.isfinite(v) for vs in ev.query(expr).values() for v in vs), expr
    print(f"dashboard: all {len(exprs)} queries evaluate to data")
    assert fmt_value(0.35, "s") == "350 ms" and fmt_value(4970, "ops") == "4.97 K ops/s"
    assert fmt_value(0.5, "percentunit") == "50%" and fmt_value(12, "short") == "12"
    assert fmt_value(2 * 1024 ** 2, "bytes") == "2 MiB" and fmt_value(512, "bytes") == "512 B"
    out = a.out or str(Path(tempfile.gettempdir()) / "dash-selftest.png")
    render(dashboard, ev.tl, out, "floe (self-test, synthetic data)")
    print(f"rendered {out}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    argv = ["selftest" if x == "--self-test" else x for x in argv]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scrape", help="poll a /metrics endpoint into a JSON-lines file")
    s.add_argument("--url", default="http://127.0.0.1:9464/metrics")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes (default 2)")
    s.add_argument("--duration", type=float, help="stop after this many seconds (default: until SIGINT/SIGTERM)")
    s.add_argument("--out", required=True, help="JSON lines {t, text}, appended (.gz: gzip)")
    r = sub.add_parser("render", help="draw the dashboard over scrapes into a PNG")
    r.add_argument("--dashboard", default=str(REPO / "docs/grafana/floe-dashboard.json"))
    r.add_argument("--scrapes", required=True)
    r.add_argument("--out", default=str(REPO / "docs/grafana/floe-dashboard.png"))
    r.add_argument("--title", help="heading (default: the dashboard's title)")
    r.add_argument("--no-zero-fill", action="store_true",
                   help="do not count a counter's first appearance from 0 (strict Prometheus)")
    t = sub.add_parser("selftest", help="check the evaluator on synthetic data and render it")
    t.add_argument("--out", help="PNG path (default: <tmp>/dash-selftest.png)")
    a = ap.parse_args(argv)
    try:
        {"scrape": cmd_scrape, "render": cmd_render, "selftest": cmd_selftest}[a.cmd](a)
    except PromQLError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
