"""The Prometheus text exposition format and the subset of PromQL floe's dashboard uses,
evaluated over a timeline of scrapes (see README.md). Used by render.py."""
from __future__ import annotations

import bisect
import math
import re
import sys

NAN, INF = float("nan"), float("inf")


def note(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- exposition format

SERIES_RE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{(.*)\})?")  # name{labels}
LABEL_RE = re.compile(r'\s*,?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*')
ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_series_keys = {}  # "name{labels}" text -> label tuple: parse each series' text once


def unescape(value):
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), "\\" + m.group(1)), value)


def series_key(text):
    key = _series_keys.get(text)
    if key is None:
        m = SERIES_RE.fullmatch(text)
        labels, pos, body = {"__name__": m.group(1)}, 0, m.group(2) or ""
        while body[pos:].strip(" ,"):
            lm = LABEL_RE.match(body, pos)
            labels[lm.group(1)] = unescape(lm.group(2))
            pos = lm.end()
        key = _series_keys[text] = tuple(sorted(labels.items()))
    return key


def parse_exposition(text):
    """Prometheus text format 0.0.4 -> ({labels: value}, {family: type}).

    A series is identified by its sorted label tuple, `__name__` included. Sample
    timestamps are ignored: the scrape's own time is used."""
    samples, types = {}, {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
        elif line:
            # The value (and timestamp) follow the last "}", or the name when unlabelled.
            try:
                cut = line.rindex("}") + 1 if "{" in line else len(line.split(None, 1)[0])
                samples[series_key(line[:cut].strip())] = float(line[cut:].split()[0])
            except (AttributeError, IndexError, ValueError):
                raise ValueError(f"line {lineno}: not a sample: {line!r}") from None
    return samples, types


def is_cumulative(name, types):
    """Counters and histogram/summary _bucket/_sum/_count series only ever grow."""
    if types.get(name) == "counter" or (name.endswith("_total") and types.get(name[:-6]) == "counter"):
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[:-len(suffix)]) in ("histogram", "summary"):
            return True
    # No TYPE line for the series or its family: judge by the name.
    family = re.sub(r"_(total|bucket|sum|count)$", "", name)
    return name not in types and family not in types and name.endswith(("_total", "_bucket", "_count"))


class Timeline:
    """Every scrape's samples, plus per-series arrays for range functions.

    With zero_fill, a cumulative series absent from a scrape and present in the next is
    given a 0 sample at the scrape where it was absent: floe's OpenTelemetry counters
    only appear once first incremented (and restart from nothing after a restart), so
    without it the first increments would be invisible to rate()/increase(), as they
    are in a real Prometheus. Instant selectors only see real samples."""

    def __init__(self, scrapes, zero_fill=True):
        self.times, self.at, types, seen = [], [], {}, {}
        for t, text in sorted(scrapes, key=lambda s: s[0]):
            try:
                samples, ty = parse_exposition(text)
            except ValueError as e:
                note(f"scrape at t={t:.3f} skipped: {e}")
                continue
            types.update(ty)
            for k, v in samples.items():
                seen.setdefault(k, []).append((len(self.times), v))
            self.times.append(t)
            self.at.append(samples)
        if not self.times:
            raise ValueError("no usable scrapes")
        self.series = {}  # labels -> (times, values, reset-adjusted values)
        for k, points in seen.items():
            fill = zero_fill and is_cumulative(dict(k)["__name__"], types)
            ts, vs, prev = [], [], -1
            for i, v in points:
                if fill and i > 0 and prev != i - 1:
                    ts.append(self.times[i - 1])
                    vs.append(0.0)
                ts.append(self.times[i])
                vs.append(v)
                prev = i
            # adj[j] - adj[i] is the increase between samples i and j with counter
            # resets corrected as Prometheus does (a drop adds the value before it).
            adj, corr = [], 0.0
            for j, v in enumerate(vs):
                if j and v < vs[j - 1]:
                    corr += vs[j - 1]
                adj.append(v + corr)
            self.series[k] = (ts, vs, adj)


# ----------------------------------------------------------------- PromQL subset

class PromQLError(Exception):
    pass


TOKEN_RE = re.compile(r"""\s*(?:
    (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<range>\[[^\]]*\])
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<id>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
)""", re.X)
DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
AGGREGATIONS = {"sum": sum, "max": max, "min": min, "count": len,
                "avg": lambda vs: sum(vs) / len(vs)}
COMPARISONS = {">": lambda a, b: a > b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b,
               "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
ARITHMETIC = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
              "/": lambda a, b: a / b if b else (NAN if a == 0 or a != a else math.copysign(INF, a)),
              "%": lambda a, b: math.fmod(a, b) if b else NAN}
LEVELS = [("or",), tuple(COMPARISONS), ("+", "-"), ("*", "/", "%")]
KEYWORDS = ("and", "unless", "bool", "offset", "on", "ignoring", "group_left", "group_right")
TEMPLATE_VAR = re.compile(r"\$\{?\w+|\[\[\w+\]\]")


class Parser:
    """Recursive descent over the PromQL subset. Nodes are tuples:
    ("num", v) ("sel", name, matchers, range_s|None) ("agg", op, by|None, e)
    ("call", fn, args) ("bin", op, l, r) ("neg", e)."""

    def __init__(self, expr):
        self.expr, self.toks, pos = expr, [], 0
        while expr[pos:].strip():
            m = TOKEN_RE.match(expr, pos)
            if not m:
                self.fail(f"unexpected character at {pos}: {expr[pos:].strip()[:10]!r}")
            self.toks.append((m.lastgroup, m.group(m.lastgroup)))
            pos = m.end()
        self.toks.append(("end", ""))
        self.i = 0

    def fail(self, why):
        raise PromQLError(f"{why} in PromQL expression: {self.expr}")

    def peek(self):
        return self.toks[self.i]

    def take(self, kind=None, value=None):
        tok = self.toks[self.i]
        if (kind and tok[0] != kind) or (value and tok[1] != value):
            self.fail(f"expected {value or kind}, got {tok[1] or 'end'!r}")
        self.i += 1
        return tok[1]

    def parse(self):
        node = self.binary_expr()
        self.take("end")
        return node

    def binary_expr(self, level=0):
        """Left-associative binary operators, loosest first: or; comparisons; + -; * / %."""
        if level == len(LEVELS):
            return self.unary()
        node = self.binary_expr(level + 1)
        while self.peek()[1] in LEVELS[level] and self.peek()[0] in ("op", "id"):
            node = ("bin", self.take(), node, self.binary_expr(level + 1))
        if self.peek()[0] == "id" and self.peek()[1] in KEYWORDS:
            self.fail(f"unsupported keyword {self.peek()[1]!r}")
        return node

    def unary(self):
        if self.peek() == ("op", "-"):
            self.take()
            return ("neg", self.unary())
        return self.primary()

    def primary(self):
        kind, value = self.peek()
        if kind == "num":
            self.take()
            return ("num", float(value))
        if (kind, value) == ("op", "("):
            self.take()
            node = self.binary_expr()
            self.take("op", ")")
            return node
        if (kind, value) == ("op", "{"):
            return self.selector(None)
        if kind != "id" or value in KEYWORDS:
            self.fail(f"unexpected {value or 'end'!r}" if kind != "id" else f"unsupported keyword {value!r}")
        self.take()
        if value in AGGREGATIONS:
            by = self.grouping()
            self.take("op", "(")
            inner = self.binary_expr()
            self.take("op", ")")
            return ("agg", value, by if by is not None else self.grouping(), inner)
        if self.peek() == ("op", "("):
            if value not in ("rate", "increase", "histogram_quantile", "vector"):
                self.fail(f"unsupported function {value}()")
            self.take()
            args = [self.binary_expr()]
            while self.peek() == ("op", ","):
                self.take()
                args.append(self.binary_expr())
            self.take("op", ")")
            want = 2 if value == "histogram_quantile" else 1
            if len(args) != want:
                self.fail(f"{value}() takes {want} argument(s)")
            if value in ("rate", "increase") and (args[0][0] != "sel" or args[0][3] is None):
                self.fail(f"{value}() needs a range selector such as x[5m]")
            return ("call", value, args)
        return self.selector(value)

    def grouping(self):
        if self.peek() == ("id", "without"):
            self.fail("unsupported 'without' grouping")
        if self.peek() != ("id", "by"):
            return None
        self.take()
        self.take("op", "(")
        labels = []
        while self.peek() != ("op", ")"):
            labels.append(self.take("id"))
            if self.peek() == ("op", ","):
                self.take()
        self.take("op", ")")
        return labels

    def selector(self, name):
        matchers = []
        if self.peek() == ("op", "{"):
            self.take()
            while self.peek() != ("op", "}"):
                label, op = self.take("id"), self.take("op")
                if op not in ("=", "!=", "=~", "!~"):
                    self.fail(f"bad label matcher operator {op!r}")
                raw = self.take("str")
                value = unescape(raw[1:-1])
                # A dashboard variable ($job, ${job}, [[job]]) matches everything:
                # the scraped series carry no job label and the picture shows "All".
                if not TEMPLATE_VAR.search(value):
                    try:
                        rx = re.compile(value) if op in ("=~", "!~") else None
                    except re.error as e:
                        self.fail(f"bad regular expression {value!r} ({e})")
                    matchers.append((label, op, value, rx))
                if self.peek() == ("op", ","):
                    self.take()
            self.take("op", "}")
        if name:
            matchers.append(("__name__", "=", name, None))
        elif not matchers:
            self.fail("empty selector")
        rng = None
        if self.peek()[0] == "range":
            text = self.take()[1:-1].strip()
            parts = DURATION_RE.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                self.fail(f"unsupported range [{text}]")
            rng = sum(int(n) * UNITS[u] for n, u in parts)
        return ("sel", name, tuple(matchers), rng)


def drop_name(labels):
    return tuple(kv for kv in labels if kv[0] != "__name__")


def bucket_quantile(q, buckets):
    """Prometheus' bucketQuantile: buckets is [(upper bound, cumulative count)]."""
    if math.isnan(q):
        return NAN
    if q < 0 or q > 1:
        return -INF if q < 0 else INF
    buckets = sorted(buckets)
    if len(buckets) < 2 or buckets[-1][0] != INF:
        return NAN
    running = 0.0  # counts must not decrease with le (they can, by float noise)
    buckets = [(le, running := max(running, c)) for le, c in buckets]
    total = buckets[-1][1]
    if not total > 0:
        return NAN
    rank = q * total
    b = next(j for j, (_, c) in enumerate(buckets) if c >= rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, end, count = 0.0, buckets[b][0], buckets[b][1]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (end - start) * rank / count


class Evaluator:
    """Evaluates parsed expressions at a scrape index. A result is a float (scalar)
    or a dict {labels: value} (instant vector)."""

    def __init__(self, timeline):
        self.tl, self.matched = timeline, {}

    def query(self, expr):
        """Parse expr and evaluate it at every scrape: {labels: [value or NaN per scrape]}."""
        node = Parser(expr).parse()
        out = {}
        for i in range(len(self.tl.times)):
            try:
                result = self.eval(node, i)
            except PromQLError as e:
                raise PromQLError(f"{e} in PromQL expression: {expr}") from None
            for labels, v in ({(): result} if isinstance(result, float) else result).items():
                out.setdefault(labels, [NAN] * len(self.tl.times))[i] = v
        return dict(sorted(out.items()))

    def select(self, node):
        key = node[:3]  # name and matchers (hashable): the series it matches never change
        if key not in self.matched:
            def ok(labels):
                d = dict(labels)
                for label, op, value, rx in node[2]:
                    v = d.get(label, "")
                    hit = rx.fullmatch(v) is not None if rx else v == value
                    if hit != (op in ("=", "=~")):
                        return False
                return True
            self.matched[key] = [k for k in self.tl.series if ok(k)]
        return self.matched[key]

    def eval(self, node, i):
        kind = node[0]
        if kind == "num":
            return node[1]
        if kind == "sel":
            if node[3] is not None:
                raise PromQLError(f"range selector outside rate()/increase(): {node[1]}")
            at = self.tl.at[i]
            return {k: at[k] for k in self.select(node) if k in at}
        if kind == "neg":
            x = self.eval(node[1], i)
            return -x if isinstance(x, float) else {drop_name(k): -v for k, v in x.items()}
        if kind == "agg":
            _, op, by, inner = node
            groups = {}
            for k, v in self.vector(inner, i).items():
                key = tuple(kv for kv in k if kv[0] in by) if by is not None else ()
                groups.setdefault(key, []).append(v)
            return {k: float(AGGREGATIONS[op](vs)) for k, vs in groups.items()}
        if kind == "call":
            return self.call(node[1], node[2], i)
        return self.binary(node[1], self.eval(node[2], i), self.eval(node[3], i))

    def vector(self, node, i):
        x = self.eval(node, i)
        if isinstance(x, float):
            raise PromQLError(f"expected an instant vector, got the scalar {x}")
        return x

    def call(self, fn, args, i):
        if fn == "vector":
            x = self.eval(args[0], i)
            if not isinstance(x, float):
                raise PromQLError("vector() takes a scalar")
            return {(): x}
        if fn == "histogram_quantile":
            q = self.eval(args[0], i)
            if not isinstance(q, float):
                raise PromQLError("histogram_quantile() needs a scalar quantile")
            groups = {}
            for k, v in self.vector(args[1], i).items():
                d = dict(k)
                if "le" in d:
                    rest = tuple(kv for kv in k if kv[0] not in ("le", "__name__"))
                    groups.setdefault(rest, []).append((float(d["le"]), v))
            return {k: bucket_quantile(q, b) for k, b in groups.items()}
        out = {}  # rate / increase
        for k in self.select(args[0]):
            v = self.extrapolated(k, i, args[0][3], fn == "rate")
            if v is not None:
                out[drop_name(k)] = v
        return out

    def extrapolated(self, key, i, rng, is_rate):
        """Prometheus' extrapolatedRate over the window (T - rng, T]. One difference
        ("extrapolation-lite"): a window starting before the first scrape is cut at
        the first scrape (included), so early in a recording rate() is the rate over
        what exists rather than an increase diluted by the whole range."""
        ts, vs, adj = self.tl.series[key]
        end, start = self.tl.times[i], self.tl.times[i] - rng
        if start < self.tl.times[0]:
            start = self.tl.times[0]
            lo = bisect.bisect_left(ts, start)
        else:
            lo = bisect.bisect_right(ts, start)
        hi = bisect.bisect_right(ts, end)
        if hi - lo < 2:
            return None
        first, last = lo, hi - 1
        result, sampled = adj[last] - adj[first], ts[last] - ts[first]
        if sampled <= 0:  # two scrapes with the same timestamp
            return None
        avg = sampled / (hi - lo - 1)
        to_start, to_end = ts[first] - start, end - ts[last]
        if result > 0 and vs[first] >= 0:  # a counter does not extrapolate below zero
            to_start = min(to_start, sampled * vs[first] / result)
        interval = sampled
        interval += to_start if to_start < avg * 1.1 else avg / 2
        interval += to_end if to_end < avg * 1.1 else avg / 2
        result *= interval / sampled
        return result / (end - start) if is_rate else result

    def binary(self, op, l, r):
        sl, sr = isinstance(l, float), isinstance(r, float)
        if op == "or":
            if sl or sr:
                raise PromQLError("'or' needs two instant vectors")
            have = {drop_name(k) for k in l}
            return {**l, **{k: v for k, v in r.items() if drop_name(k) not in have}}
        if op in COMPARISONS:  # filters (no `bool`): keeps the left side's elements
            test = COMPARISONS[op]
            if sl and sr:
                raise PromQLError(f"comparison {op} between scalars needs 'bool' (unsupported)")
            if sr:
                return {k: v for k, v in l.items() if test(v, r)}
            if sl:
                return {k: v for k, v in r.items() if test(l, v)}
            right = {drop_name(k): v for k, v in r.items()}
            return {k: v for k, v in l.items() if drop_name(k) in right and test(v, right[drop_name(k)])}
        f = ARITHMETIC[op]
        if sl and sr:
            return f(l, r)
        if sr:
            return {drop_name(k): f(v, r) for k, v in l.items()}
        if sl:
            return {drop_name(k): f(l, v) for k, v in r.items()}
        right = {}
        for k, v in r.items():  # one-to-one matching on all labels but the name
            if drop_name(k) in right:
                raise PromQLError(f"many-to-many matching in {op} (unsupported)")
            right[drop_name(k)] = v
        return {drop_name(k): f(v, right[drop_name(k)]) for k, v in l.items() if drop_name(k) in right}
