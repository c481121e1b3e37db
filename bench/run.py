#!/usr/bin/env python3
"""cubbyhole bench: the operator's pod-start-to-wrap latency and throughput against the raw
two-write pipeline, on the local control plane (e2e/cluster-up.sh) and OpenBao, in one run.

Stdlib only (plus kubectl/bao via cluster-up.sh). Everything talks to 127.0.0.1 only.

  bench/run.py [--pods 500] [--concurrency 8] [--bindings 1,50] [--operator-bin PATH]

Writes bench/report.md, bench/report.json and bench/latency-cdf.svg (see --out).
"""

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLE = "cubbyhole-agent"
WRAP_TTL = "60s"
T0 = time.monotonic()


def log(msg):
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def die(msg):
    log(f"ERROR: {msg}")
    sys.exit(1)


def loopback(url):
    host = urllib.parse.urlparse(url).hostname
    if not host or not (host.startswith("127.") or host == "localhost"):
        die(f"refusing a non-loopback address: {url}")
    return url


# ---------------------------------------------------------------- HTTP clients (keep-alive)


class Http:
    """One keep-alive connection per thread to one base URL."""

    def __init__(self, base, ctx=None, headers=None):
        u = urllib.parse.urlparse(loopback(base))
        self.host, self.port, self.tls = u.hostname, u.port, u.scheme == "https"
        self.ctx, self.headers = ctx, headers or {}
        self.local = threading.local()

    def conn(self, fresh=False):
        c = getattr(self.local, "c", None)
        if c is None or fresh:
            if self.tls:
                c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
            else:
                c = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.local.c = c
        return c

    def request(self, method, path, body=None, headers=None):
        h = dict(self.headers)
        h.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        for attempt in range(3):
            try:
                c = self.conn(fresh=attempt > 0)
                c.request(method, path, body=data, headers=h)
                r = c.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
            except (http.client.HTTPException, OSError):
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")

    def stream(self, path):
        """A new connection for a watch; returns the response to readline() from."""
        if self.tls:
            c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=900)
        else:
            c = http.client.HTTPConnection(self.host, self.port, timeout=900)
        c.request("GET", path, headers=self.headers)
        return c.getresponse()


def kube_client(cluster_dir):
    env = read_env(os.path.join(cluster_dir, "env"))
    ctx = ssl.create_default_context(cafile=env["KUBE_CA"])
    certs = os.path.join(cluster_dir, "certs")
    ctx.load_cert_chain(os.path.join(certs, "admin.crt"), os.path.join(certs, "admin.key"))
    return Http(env["APISERVER_URL"], ctx)


def read_env(path):
    out = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                out[k] = v
    return out


def seconds(duration):
    """Seconds in a duration as the operator's config writes it: "90s", "10m", "1h", "1m30s"."""
    total, number = 0.0, ""
    for ch in duration.strip():
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in "smh" and number:
            total += float(number) * {"s": 1, "m": 60, "h": 3600}[ch]
            number = ""
        else:
            die(f"not a duration: {duration!r}")
    if number:
        die(f"not a duration (a unit is needed): {duration!r}")
    return total


def check(status, body, what, ok=(200, 201, 202)):
    if status not in ok:
        raise RuntimeError(f"{what}: HTTP {status}: {json.dumps(body)[:300]}")
    return body


# ---------------------------------------------------------------- statistics and drawing


def pct(sorted_xs, p):
    if not sorted_xs:
        return None
    i = min(len(sorted_xs) - 1, max(0, int(round(p / 100 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[i]


def summary(latencies, first_start, last_end, n):
    xs = sorted(latencies)
    wall = max(last_end - first_start, 1e-9)
    return {
        "count": len(xs),
        "p50_s": pct(xs, 50),
        "p90_s": pct(xs, 90),
        "p99_s": pct(xs, 99),
        "max_s": xs[-1] if xs else None,
        "wall_s": wall,
        "per_s": n / wall,
    }


def cdf_svg(series, path):
    """series: [(label, sorted latencies in s)]. A hand-drawn CDF, log-scaled x axis."""
    import math

    w, h, ml, mr, mt, mb = 760, 420, 60, 20, 30, 50
    allx = [x for _, xs in series for x in xs if x > 0]
    lo = 10 ** math.floor(math.log10(max(min(allx), 1e-3))) if allx else 1e-3
    hi = 10 ** math.ceil(math.log10(max(allx))) if allx else 1
    if hi <= lo:
        hi = lo * 10

    def sx(v):
        v = max(v, lo)
        return ml + (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (w - ml - mr)

    def sy(f):
        return mt + (1 - f) * (h - mt - mb)

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14">cubbyhole bench: latency CDF (pod created / request sent → wrap in Secret)</text>',
    ]
    d = lo
    while d <= hi * 1.0001:
        x = sx(d)
        out.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{h - mb}" stroke="#ddd"/>')
        label = f"{d:g} s" if d >= 1 else f"{d * 1000:g} ms"
        out.append(f'<text x="{x:.1f}" y="{h - mb + 16}" text-anchor="middle">{label}</text>')
        d *= 10
    for f in (0, 0.25, 0.5, 0.75, 0.9, 0.99, 1):
        y = sy(f)
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{w - mr}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{f:g}</text>')
    out.append(f'<rect x="{ml}" y="{mt}" width="{w - ml - mr}" height="{h - mt - mb}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">latency (log scale)</text>')
    for i, (label, xs) in enumerate(series):
        if not xs:
            continue
        n = len(xs)
        pts = [f"{sx(xs[0]):.1f},{sy(0):.1f}"]
        for j, x in enumerate(xs):
            pts.append(f"{sx(x):.1f},{sy(j / n):.1f}")
            pts.append(f"{sx(x):.1f},{sy((j + 1) / n):.1f}")
        c = colors[i % len(colors)]
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(pts)}"/>')
        ly = mt + 16 + 16 * i
        out.append(f'<line x1="{ml + 10}" y1="{ly - 4}" x2="{ml + 30}" y2="{ly - 4}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{ml + 36}" y="{ly}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ---------------------------------------------------------------- OpenBao audit log


class Audit:
    def __init__(self, path):
        self.path = path

    def offset(self):
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def entries(self, start, end=None):
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        for line in data.splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                continue


def renewed_accessors(entries):
    """The accessors renew-accessor requests named (the audit log is raw here: accessors in clear)."""
    return {e.get("request", {}).get("data", {}).get("accessor") for e in entries
            if e.get("type") == "request" and e.get("request", {}).get("path") == "auth/token/renew-accessor"} - {None}


def request_counts(entries):
    counts = {}
    for e in entries:
        if e.get("type") != "request":
            continue
        p = e.get("request", {}).get("path", "")
        for prefix in ("auth/token/create/", "sys/wrapping/lookup", "auth/token/revoke-accessor",
                       "auth/token/lookup-accessor", "auth/token/renew-accessor", "auth/kubernetes/login",
                       "sys/health"):
            if p.startswith(prefix):
                p = prefix.rstrip("/")
                break
        counts[p] = counts.get(p, 0) + 1
    return counts


# ---------------------------------------------------------------- the operator process


class Rss:
    """Samples VmRSS of a process every 100 ms."""

    def __init__(self, pid):
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def read(self):
        out = {}
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmRSS", "VmHWM"):
                        out[k] = int(v.split()[0]) / 1024.0
        except OSError:
            pass
        return out

    def run(self):
        while not self.stop.wait(0.1):
            v = self.read().get("VmRSS")
            if v is not None:
                self.samples.append((time.monotonic(), v))

    def between(self, a, b):
        return [v for t, v in self.samples if a <= t <= b]


class Cpu:
    """CPU seconds (user + system) spent by each part of the run: the API server, etcd, the
    controller manager, OpenBao, the operator (when given) and the bench's own clients."""

    PARTS = {"API server": "cluster/apiserver.pid", "etcd": "cluster/etcd.pid",
             "controller manager": "cluster/controller-manager.pid", "OpenBao": "bao.pid"}

    def __init__(self, args, op=None):
        self.args, self.op = args, op

    def pids(self):
        out = {}
        for part, rel in self.PARTS.items():
            try:
                with open(os.path.join(self.args.dir, rel)) as f:
                    out[part] = int(f.read().strip())
            except (OSError, ValueError):
                pass
        if self.op:
            out["operator"] = self.op["proc"].pid
        return out

    def read(self):
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for part, pid in self.pids().items():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[part] = (int(fields[11]) + int(fields[12])) / tick
            except (OSError, ValueError, IndexError):
                pass
        t = os.times()
        out["bench clients"] = t.user + t.system
        return out

    @staticmethod
    def spent(before, after):
        return {k: after[k] - before[k] for k in after if k in before}


def api_requests(kube):
    """The API server's request counters (its /metrics): {(verb, resource[/subresource]): n}."""
    c = kube.conn()
    try:
        c.request("GET", "/metrics", headers=kube.headers)
        r = c.getresponse()
        text = r.read().decode(errors="replace")
    except (http.client.HTTPException, OSError):
        kube.conn(fresh=True)
        return {}
    if r.status != 200:
        return {}
    out = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        fields = dict(kv.split("=", 1) for kv in labels[len("apiserver_request_total{"):-1].split(",") if "=" in kv)
        get = lambda k: fields.get(k, "").strip('"')
        resource = get("resource") + (f"/{get('subresource')}" if get("subresource") else "")
        key = (get("verb"), resource)
        out[key] = out.get(key, 0) + float(value)
    return out


def delete_namespace(kube, ns, within=120):
    """Deletes a phase's namespace and waits until it is gone (everything in it deleted)."""
    kube.request("DELETE", f"/api/v1/namespaces/{ns}")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and kube.request("GET", f"/api/v1/namespaces/{ns}")[0] != 404:
        time.sleep(0.5)


def api_writes_text(before, after, n):
    """Writes per pod to the API server between two counter snapshots, by verb and resource."""
    writes = {k: after[k] - before.get(k, 0) for k in after
              if k[0] in ("POST", "PATCH", "PUT", "APPLY", "DELETE") and after[k] - before.get(k, 0) >= n / 200}
    return ", ".join(f"{verb} {res} {v / n:.2f}" for (verb, res), v in sorted(writes.items(), key=lambda kv: -kv[1]))


def cpu_text(spent, n):
    return ", ".join(f"{k} {v:.1f} s ({v / n * 1000:.1f} ms/pod)" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]))


def start_operator(args, env, port):
    cfg = os.path.join(args.dir, "bench-operator.yaml")
    with open(cfg, "w") as f:
        f.write(f"""vault:
  address: {loopback(env['VAULT_ADDR'])}
  auth:
    kubernetes:
      role: cubbyhole-operator
      jwtPath: {env['OPERATOR_JWT']}
allowedRoles:
  - namespaces: ["*"]
    roles: ["{ROLE}"]
lookupPeriod: {args.lookup_period}
maxLookupsPerSecond: {args.max_lookups}
renewalWindow: {args.renewal_window}
""")
        if args.operator_config:
            f.write(args.operator_config.replace("\\n", "\n") + "\n")
    penv = dict(os.environ, KUBECONFIG=env["OPERATOR_KUBECONFIG"], POD_NAMESPACE="cubbyhole-system")
    penv.setdefault("RUST_LOG", "info,kube=warn,hyper=warn,tower=warn")
    logf = open(os.path.join(args.dir, "bench-operator.log"), "w")
    # The webhook listener also serves the request endpoint (request delivery).
    args.endpoint_port = free_port()
    p = subprocess.Popen([args.operator_bin, "operator", "--config", cfg, "--listen", f"127.0.0.1:{port}",
                          "--webhook-listen", f"127.0.0.1:{args.endpoint_port}"],
                         env=penv, stdout=logf, stderr=subprocess.STDOUT)
    with open(os.path.join(args.dir, "operator.pid"), "w") as f:
        f.write(str(p.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.poll() is not None:
            die(f"operator exited; see {args.dir}/bench-operator.log")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return p
        except OSError:
            pass
        time.sleep(0.2)
    die("operator not ready within 60 s")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- phases


def make_namespace(kube, name):
    check(*kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}}), f"namespace {name}")
    for _ in range(300):
        s, _ = kube.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
        if s == 200:
            return
        time.sleep(0.1)
    die(f"no default service account in {name}")


def raw_pipeline(args, kube, vault, token, pod_start=False):
    """N times, C concurrent clients: one wrapped create and one Secret create (the issue's raw
    pipeline); or, with `pod_start`, what a burst of the operator carries per pod without
    watches, caches or planning: the client's pod create (the same pod spec, no binding selects
    it), then the wrapped create and the record's Secret create. The second is the ceiling of
    one write per pod start on this machine, where the API server is the bottleneck."""
    kind = "pod-start" if pod_start else "raw"
    ns = f"bench-{kind}-{args.run_id}"
    make_namespace(kube, ns)
    steps = ("pod create + " if pod_start else "") + f"wrapped auth/token/create/{ROLE} + Secret create"
    log(f"{kind} pipeline: {args.pods} x ({steps}), {args.concurrency} clients")
    lat, accessors = [None] * args.pods, [None] * args.pods
    done = [0]
    lock = threading.Lock()

    def one(i):
        t = time.monotonic()
        name = f"raw-{i}-wrap"
        secrets = f"/api/v1/namespaces/{ns}/secrets"
        if pod_start:
            check(*kube.request("POST", f"/api/v1/namespaces/{ns}/pods", pod_manifest(f"raw-{i}", "raw", 1)), "pod")
        s, body = vault.request("POST", f"/v1/auth/token/create/{ROLE}", {
            "policies": [ROLE], "ttl": "1h",
            "meta": {"namespace": ns, "pod": f"raw-{i}", "pod_uid": f"raw-{i}", "binding": "raw"},
        }, {"X-Vault-Token": token, "X-Vault-Wrap-TTL": WRAP_TTL})
        wrap = check(s, body, "raw mint")["wrap_info"]
        data = {"token": base64.b64encode(wrap["token"].encode()).decode()}
        check(*kube.request("POST", secrets, {"metadata": {"name": name, "labels": {"bench": "raw"}},
                                              "type": "Opaque", "data": data}), "raw Secret")
        end = time.monotonic()
        lat[i], accessors[i] = (t, end), wrap["accessor"]
        with lock:
            done[0] += 1

    stop = threading.Event()
    threading.Thread(target=progress, args=(stop, lambda: f"{kind}: {done[0]}/{args.pods}"), daemon=True).start()
    cpu = Cpu(args)
    cpu_before, api_before = cpu.read(), api_requests(kube)
    start = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as ex:
        list(ex.map(one, range(args.pods)))
    stop.set()
    st = summary([b - a for a, b in lat], start, max(b for _, b in lat), args.pods)
    st["cpu_s"] = Cpu.spent(cpu_before, cpu.read())
    st["api_writes_per_pod"] = api_writes_text(api_before, api_requests(kube), args.pods)
    log(f"{kind}: {st['per_s']:.0f} per s, p50 {st['p50_s'] * 1000:.1f} ms, p99 {st['p99_s'] * 1000:.1f} ms")
    # Tidy up: nothing the bench minted stays alive.
    with ThreadPoolExecutor(args.concurrency) as ex:
        list(ex.map(lambda a: vault.request("POST", "/v1/auth/token/revoke-accessor", {"accessor": a},
                                            {"X-Vault-Token": args.root_token}), accessors))
    # Gone before anything else is measured (the namespace controller's deletions cost CPU).
    delete_namespace(kube, ns)
    st["latencies"] = sorted(b - a for a, b in lat)
    return st


def progress(stop, text):
    while not stop.wait(2):
        log(text())


def watch_secrets(kube, ns, served, cond, stop):
    """Records the first time each pod's record carries a wrapping token."""
    path = f"/api/v1/namespaces/{ns}/secrets?watch=1&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcubbyhole&timeoutSeconds=900"
    while not stop.is_set():
        try:
            r = kube.stream(path)
            while not stop.is_set():
                line = r.readline()
                if not line:
                    break
                ev = json.loads(line)
                obj = ev.get("object", {})
                pod = obj.get("metadata", {}).get("annotations", {}).get("cubbyhole.dev/pod")
                if pod and obj.get("data", {}).get("token"):
                    now = time.monotonic()
                    with cond:
                        if pod not in served:
                            served[pod] = now
                            cond.notify_all()
        except (OSError, http.client.HTTPException, ValueError):
            time.sleep(0.1)


def pod_manifest(name, app, binding):
    return {
        "metadata": {"name": name, "labels": {"app": app, "tier": "agents", "bench": "true"},
                     "annotations": {"cubbyhole.dev/secret-name": f"{name}-wrap",
                                     "example.com/owner": "bench", "example.com/description": "an agent pod of the bench " * 4}},
        "spec": {
            "restartPolicy": "OnFailure",
            "schedulingGates": [{"name": "cubbyhole.dev/bench"}],
            "initContainers": [{
                "name": "unwrap", "image": "ghcr.io/cubbyhole-dev/cubbyhole:0.1.0",
                "args": ["unwrap", "--token-file=/var/run/cubbyhole/wrap/token", "--out=/var/run/cubbyhole/token/token",
                         f"--expect-path=auth/token/create/{ROLE}", "--wait-for-fresh=90s"],
                "env": [{"name": "VAULT_ADDR", "value": "https://vault.vault.svc:8200"}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
                "volumeMounts": [{"name": "wrap", "mountPath": "/var/run/cubbyhole/wrap", "readOnly": True},
                                 {"name": "token", "mountPath": "/var/run/cubbyhole/token"}],
            }],
            "containers": [{
                "name": "agent", "image": "busybox:1.36",
                "command": ["sh", "-c", "test -s /var/run/cubbyhole/token/token && sleep 3600"],
                "env": [{"name": f"SETTING_{k}", "value": f"value-{k}"} for k in range(8)],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                "volumeMounts": [{"name": "token", "mountPath": "/var/run/cubbyhole/token", "readOnly": True}],
            }],
            "volumes": [{"name": "wrap", "secret": {"secretName": f"{name}-wrap", "defaultMode": 0o400}},
                        {"name": "token", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
        },
    }


def backlog_phase(args, kube, audit, op):
    """The operator's own pipeline, without the clients' pod creates competing for the machine:
    N pods wait unselected, then one binding selecting them all is applied; measured from the
    binding's create to the last wrap seen in its Secret. Compared with the raw two-write
    pipeline (same work: one mint and one Secret create per pod)."""
    n, c = args.pods, args.concurrency
    ns = f"bench-backlog-{args.run_id}"
    log(f"backlog: {n} pods waiting, then one binding selecting them (namespace {ns})")
    make_namespace(kube, ns)
    with ThreadPoolExecutor(c) as ex:
        list(ex.map(lambda i: check(*kube.request("POST", f"/api/v1/namespaces/{ns}/pods",
                                                  pod_manifest(f"agent-{i}", "backlog", 1)), "pod"), range(n)))
    time.sleep(2)  # the operator's pod watch has them all; nothing selects them yet
    served, cond, stop = {}, threading.Condition(), threading.Event()
    threading.Thread(target=watch_secrets, args=(kube, ns, served, cond, stop), daemon=True).start()
    time.sleep(0.5)  # the watch is established
    audit_start = audit.offset()
    cpu = Cpu(args, op)
    cpu_before, api_before = cpu.read(), api_requests(kube)
    start = time.monotonic()
    check(*kube.request("POST", f"/apis/cubbyhole.dev/v1alpha1/namespaces/{ns}/agentsecretbindings", {
        "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
        "metadata": {"name": "backlog"},
        "spec": {"podSelector": {"matchLabels": {"app": "backlog"}},
                 "vault": {"tokenRole": ROLE, "policies": [ROLE], "tokenTTL": "1h", "wrapTTL": WRAP_TTL},
                 "agentContainer": "unwrap"},
    }), "binding")
    with cond:
        ok = cond.wait_for(lambda: len(served) >= n, timeout=args.timeout)
    cpu_spent = Cpu.spent(cpu_before, cpu.read())
    api_writes = api_writes_text(api_before, api_requests(kube), n)
    stop.set()
    lat = [t - start for t in served.values()]
    st = summary(lat, start, max(served.values()) if served else time.monotonic(), len(lat))
    minted = {}
    for e in audit.entries(audit_start):
        if e.get("type") == "response" and e.get("request", {}).get("path", "").startswith("auth/token/create/"):
            meta = (e.get("request", {}).get("data") or {}).get("meta") or {}
            if meta.get("namespace") == ns:
                minted[meta.get("pod")] = minted.get(meta.get("pod"), 0) + 1
    problems = []
    if not ok:
        problems.append(f"only {len(served)}/{n} pods served within {args.timeout} s")
    twice = sorted(p for p, k in minted.items() if k != 1)
    if twice:
        problems.append(f"{len(twice)} pods minted for more than once: {twice[:5]}")
    st.update({"label": f"{n} pods waiting / 1 binding", "pods": n, "served": len(served), "cpu_s": cpu_spent,
               "api_writes_per_pod": api_writes, "minted": sum(minted.values()), "correct": not problems,
               "problems": problems, "latencies": sorted(lat)})
    log(f"backlog: served {len(served)}/{n}, {st['per_s']:.0f} pods/s, last at {fmt(st['max_s'])}"
        f"{'; ' + '; '.join(problems) if problems else ', exactly one mint each'}")
    delete_namespace(kube, ns)
    return st


def burst(args, kube, vault, audit, op, bindings, restart):
    n, c = args.pods, args.concurrency
    ns = f"bench-{bindings}b-{args.run_id}"
    label = f"{n} pods / {bindings} binding{'s' if bindings > 1 else ''}"
    log(f"operator burst: {label}, {c} clients (namespace {ns})")
    make_namespace(kube, ns)
    for j in range(bindings):
        check(*kube.request("POST", f"/apis/cubbyhole.dev/v1alpha1/namespaces/{ns}/agentsecretbindings", {
            "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding",
            "metadata": {"name": f"agents-{j}"},
            "spec": {"podSelector": {"matchLabels": {"app": f"agent-{j}"}},
                     "vault": {"tokenRole": ROLE, "policies": [ROLE], "tokenTTL": "1h", "wrapTTL": WRAP_TTL},
                     "agentContainer": "unwrap"},
        }), "binding")
    # Wait until every binding was reconciled once (it carries a status).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        s, body = kube.request("GET", f"/apis/cubbyhole.dev/v1alpha1/namespaces/{ns}/agentsecretbindings")
        items = check(s, body, "list bindings")["items"]
        if sum(1 for b in items if b.get("status", {}).get("conditions")) == bindings:
            break
        time.sleep(0.2)
    else:
        die("bindings were not reconciled within 120 s")
    served, cond, stop = {}, threading.Condition(), threading.Event()
    threading.Thread(target=watch_secrets, args=(kube, ns, served, cond, stop), daemon=True).start()
    time.sleep(0.5)  # the watch is established
    audit_start = audit.offset()
    created = {}
    lock = threading.Lock()

    def create(i):
        name = f"agent-{i}"
        t = time.monotonic()
        check(*kube.request("POST", f"/api/v1/namespaces/{ns}/pods", pod_manifest(name, f"agent-{i % bindings}", bindings)), "pod")
        with lock:
            created[name] = t

    prog = threading.Event()
    threading.Thread(target=progress, args=(prog, lambda: f"burst {label}: created {len(created)}/{n}, served {len(served)}/{n}"), daemon=True).start()
    cpu = Cpu(args, op)
    cpu_before, api_before = cpu.read(), api_requests(kube)
    start = time.monotonic()
    with ThreadPoolExecutor(c) as ex:
        list(ex.map(create, range(n)))
    created_in = time.monotonic() - start
    log(f"{n} pods created in {created_in:.2f} s")
    timeout = args.timeout
    with cond:
        ok = cond.wait_for(lambda: len(served) >= n, timeout=timeout)
    all_served = time.monotonic()
    cpu_spent = Cpu.spent(cpu_before, cpu.read())
    api_writes = api_writes_text(api_before, api_requests(kube), n)
    prog.set()
    if not ok:
        log(f"WARNING: only {len(served)}/{n} pods served within {timeout} s")
    audit_served = audit.offset()
    # Steady state: 5 s after the last delivery, with every wrap still outstanding.
    time.sleep(5)
    steady_from = time.monotonic()
    audit_steady_start = audit.offset()
    time.sleep(5)
    audit_steady_end = audit.offset()
    steady = op["rss"].between(steady_from, time.monotonic())
    peak = op["rss"].between(start, time.monotonic())
    lat = [served[p] - created[p] for p in created if p in served]
    st = summary(lat, start, max(served.values()) if served else all_served, len(lat))
    st.update({"label": label, "pods": n, "bindings": bindings, "served": len(served), "created_in_s": created_in,
               "cpu_s": cpu_spent, "api_writes_per_pod": api_writes,
               "rss_peak_mib": max(peak) if peak else None,
               "rss_steady_mib": sorted(steady)[len(steady) // 2] if steady else None})
    counts = request_counts(audit.entries(audit_start, audit_served))
    st["vault_requests_until_served"] = counts
    st["vault_requests_per_pod"] = sum(counts.values()) / n
    steady_counts = request_counts(audit.entries(audit_steady_start, audit_steady_end))
    st["vault_requests_per_s_steady"] = {k: v / 5.0 for k, v in steady_counts.items()}
    log(f"burst {label}: served {len(served)}/{n}, {st['per_s']:.0f} pods/s, p50 {st['p50_s']:.2f} s, "
        f"p99 {st['p99_s']:.2f} s, max {st['max_s']:.2f} s")
    # Positive control, at the steady state (before the soak deletes pods): a wrap still
    # outstanding reads as live, so "gone" after the pods are deleted means gone.
    control = served_wrap_accessor(audit, audit_start)
    control_state = accessor_state(vault, args, control) if control else "no mint found"
    # The soak starts from the steady state (before any restart), so growth is measured from a
    # warm operator.
    if args.soak:
        st["soak"] = soak(args, kube, ns, bindings, op, created, served, lock, cond)
    problems = []
    if control_state != "live":
        problems.append(f"an outstanding wrap reads as {control_state}: the liveness probe proves nothing")
    if restart:
        st["restart"] = restart_phase(args, audit, op, n)
        if st["restart"]["mints"]:
            problems.append(f"the restart minted {st['restart']['mints']} times")
    # After the restart (which wants every wrap outstanding), the agents take their tokens; the
    # deletion below must then revoke tokens held and renewed, not only wraps.
    if args.hold:
        st["hold"] = hold_phase(args, kube, vault, audit, op, ns, c)
        problems += st["hold"]["problems"]

    # Correctness: exactly one mint per pod, and after the pods go, nothing they got stays alive
    # (the wrap, and the token inside it).
    minted = {}
    for e in audit.entries(audit_start):
        if e.get("type") == "response" and e.get("request", {}).get("path", "").startswith("auth/token/create/"):
            meta = (e.get("request", {}).get("data") or {}).get("meta") or {}
            if meta.get("namespace") == ns:
                wrap = e.get("response", {}).get("wrap_info") or {}
                minted.setdefault(meta.get("pod"), []).append((wrap.get("accessor"), wrap.get("wrapped_accessor")))
    twice = {p: a for p, a in minted.items() if len(a) != 1}
    if twice:
        problems.append(f"{len(twice)} pods minted for more than once: {sorted(twice)[:5]}")
    missing = [p for p in created if p not in minted]
    if missing:
        problems.append(f"{len(missing)} pods never minted for: {missing[:5]}")
    unserved = [p for p in created if p not in served]
    if unserved:
        problems.append(f"{len(unserved)} pods without a wrap in their Secret")
    log(f"burst {label}: {sum(len(a) for a in minted.values())} mints for {len(created)} pods"
        f"{' (' + '; '.join(problems) + ')' if problems else ', exactly one each'}; operator RSS peak "
        f"{fmt(st['rss_peak_mib'], 'MiB')}, steady {fmt(st['rss_steady_mib'], 'MiB')}")
    log(f"deleting the {n} pods; checking that every wrap minted for them is revoked")
    delete_pods(kube, ns, c)
    deadline = time.monotonic() + max(60, n * 0.2)
    left = None
    while time.monotonic() < deadline:
        s, body = kube.request("GET", f"/api/v1/namespaces/{ns}/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcubbyhole")
        left = len(check(s, body, "list records")["items"])
        if left == 0:
            break
        time.sleep(0.5)
    if left:
        problems.append(f"{left} records still there after their pods were deleted")
    accessors = [a for accs in minted.values() for pair in accs for a in pair if a]
    alive = check_gone(vault, args, accessors, c, problems)
    st["minted"] = sum(len(a) for a in minted.values())
    st["live_wraps_after_pods_gone"] = alive
    st["correct"] = not problems
    st["problems"] = problems
    log(f"correctness: {'OK' if not problems else '; '.join(problems)} ({st['minted']} mints for {len(created)} pods, "
        f"{alive} live wraps or tokens after deletion)")
    stop.set()
    # The next phase starts on a quiet cluster: the namespace and garbage collectors' work on
    # these pods and records (a GET and a DELETE per Secret) must not land in its measurement.
    delete_namespace(kube, ns)
    st["latencies"] = sorted(lat)
    return st


def request_phase(args, kube, vault, audit, op_token):
    """Request delivery: N pods, each with an identity token made as the kubelet makes it
    (TokenRequest bound to the pod, audience cubbyhole), ask the operator's endpoint at once
    (C clients). Compared with the raw pipeline of the same work without the operator: a
    TokenReview and a wrapped create per ask, same clients, same run."""
    n, c = args.pods, args.request_concurrency
    ns = f"bench-request-{args.run_id}"
    log(f"request delivery: {n} agents asking, {c} clients (namespace {ns})")
    make_namespace(kube, ns)
    check(*kube.request("POST", f"/apis/cubbyhole.dev/v1alpha1/namespaces/{ns}/agentsecretbindings", {
        "apiVersion": "cubbyhole.dev/v1alpha1", "kind": "AgentSecretBinding", "metadata": {"name": "askers"},
        "spec": {"podSelector": {"matchLabels": {"app": "asker"}}, "delivery": "Request",
                 "vault": {"tokenRole": ROLE, "policies": [ROLE], "tokenTTL": "1h", "wrapTTL": WRAP_TTL}},
    }), "binding")
    identities = [None] * n

    def create(i):
        name = f"asker-{i}"
        pod = pod_manifest(name, "asker", 1)
        pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"] if v["name"] != "wrap"]
        pod["spec"]["initContainers"] = []
        body = check(*kube.request("POST", f"/api/v1/namespaces/{ns}/pods", pod), "pod")
        token = check(*kube.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/default/token", {
            "spec": {"audiences": ["cubbyhole"], "expirationSeconds": 600,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": body["metadata"]["uid"]}},
        }), "TokenRequest")["status"]["token"]
        identities[i] = token

    with ThreadPoolExecutor(args.concurrency) as ex:
        list(ex.map(create, range(n)))
    # The endpoint's CA, from the certificate Secret the operator manages.
    deadline = time.monotonic() + 60
    ca = None
    while time.monotonic() < deadline and ca is None:
        s, body = kube.request("GET", "/api/v1/namespaces/cubbyhole-system/secrets/cubbyhole-webhook-tls")
        if s == 200 and body.get("data", {}).get("ca.crt"):
            ca = base64.b64decode(body["data"]["ca.crt"]).decode()
        else:
            time.sleep(0.5)
    if ca is None:
        die("the operator did not create its certificate Secret within 60 s")
    ctx = ssl.create_default_context(cadata=ca)
    endpoint = Http(f"https://127.0.0.1:{args.endpoint_port}", ctx)
    # Ready once the endpoint knows the binding (a refusal other than NotSelected, or a wrap,
    # would spend a pod's ask: probe with an unbound token instead, which is refused first).
    unbound = check(*kube.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/default/token", {
        "spec": {"audiences": ["cubbyhole"], "expirationSeconds": 600}}), "TokenRequest")["status"]["token"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            s, body = endpoint.request("POST", "/v1/wrap", headers={"Authorization": f"Bearer {unbound}"})
            if s == 403:
                break
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.5)
    else:
        die("the request endpoint did not answer within 60 s")
    time.sleep(2)  # the binding reaches every reflector

    def timed(fn):
        lat = [None] * n

        def one(i):
            t = time.monotonic()
            result = fn(i)
            lat[i] = (t, time.monotonic())
            return result

        stop = threading.Event()
        cpu = Cpu(args, {"proc": op_proc_holder[0]} if op_proc_holder[0] else None)
        cpu_before = cpu.read()
        start = time.monotonic()
        with ThreadPoolExecutor(c) as ex:
            results = list(ex.map(one, range(n)))
        stop.set()
        st = summary([b - a for a, b in lat], start, max(b for _, b in lat), n)
        st["cpu_s"] = Cpu.spent(cpu_before, cpu.read())
        st["latencies"] = sorted(b - a for a, b in lat)
        return st, results

    def raw_one(i, record=False):
        review = check(*kube.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": identities[i], "audiences": ["cubbyhole"]}}), "TokenReview")
        if not review.get("status", {}).get("authenticated"):
            raise RuntimeError("raw TokenReview did not authenticate")
        s, body = vault.request("POST", f"/v1/auth/token/create/{ROLE}", {
            "policies": [ROLE], "ttl": "1h",
            "meta": {"namespace": ns, "pod": f"raw-{i}", "pod_uid": f"raw-{i}", "binding": "raw"},
        }, {"X-Vault-Token": op_token, "X-Vault-Wrap-TTL": WRAP_TTL})
        accessor = check(s, body, "raw mint")["wrap_info"]["accessor"]
        if record:
            # The record an ask leaves: accessors, no data.
            check(*kube.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
                "metadata": {"name": f"raw-record-{i}", "labels": {"bench": "raw"},
                             "annotations": {"bench/wrap-accessor": accessor}},
                "type": "Opaque"}), "raw record")
        return accessor

    log(f"raw request pipeline: {n} x (TokenReview + wrapped create), {c} clients")
    raw, raw_accessors = timed(raw_one)
    log(f"raw request pipeline: {raw['per_s']:.0f} per s, p99 {raw['p99_s'] * 1000:.1f} ms")
    log(f"raw request pipeline with the record: {n} x (TokenReview + wrapped create + Secret create), {c} clients")
    with_record, record_accessors = timed(lambda i: raw_one(i, record=True))
    raw["with_record"] = with_record
    for a in raw_accessors + record_accessors:
        vault.request("POST", "/v1/auth/token/revoke-accessor", {"accessor": a}, {"X-Vault-Token": args.root_token})
    log(f"raw request pipeline with the record: {with_record['per_s']:.0f} per s, p99 {with_record['p99_s'] * 1000:.1f} ms")

    def ask(i):
        s, body = endpoint.request("POST", "/v1/wrap", headers={"Authorization": f"Bearer {identities[i]}"})
        if s != 200 or not (body or {}).get("wrappingToken"):
            return f"HTTP {s} {(body or {}).get('reason')}"
        return None

    audit_start = audit.offset()
    api_before = api_requests(kube)
    log(f"operator on request: {n} asks, {c} clients")
    st, failures = timed(ask)
    st["api_writes_per_pod"] = api_writes_text(api_before, api_requests(kube), n)
    refused = [f for f in failures if f]
    creates = sum(1 for e in audit.entries(audit_start)
                  if e.get("type") == "request" and e.get("request", {}).get("path", "").startswith("auth/token/create/"))
    s, body = kube.request("GET", f"/api/v1/namespaces/{ns}/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcubbyhole")
    records = check(s, body, "list records")["items"]
    with_data = sum(1 for r in records if r.get("data"))
    problems = []
    if refused:
        problems.append(f"{len(refused)} asks not served: {sorted(set(refused))[:3]}")
    if creates != n:
        problems.append(f"{creates} creates for {n} asks")
    if len(records) != n:
        problems.append(f"{len(records)} records for {n} asks")
    if with_data:
        problems.append(f"{with_data} records carry data")
    log(f"operator on request: {st['per_s']:.0f} per s, p50 {st['p50_s'] * 1000:.0f} ms, p99 {st['p99_s'] * 1000:.0f} ms; "
        f"{creates} creates, {len(records)} records, {with_data} with data")
    # Nothing stays alive once the pods go.
    delete_pods(kube, ns, args.concurrency)
    deadline = time.monotonic() + max(60, n * 0.2)
    while time.monotonic() < deadline:
        s, body = kube.request("GET", f"/api/v1/namespaces/{ns}/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcubbyhole")
        if not check(s, body, "list records")["items"]:
            break
        time.sleep(0.5)
    else:
        problems.append("records still there after their pods were deleted")
    wraps = [e.get("response", {}).get("wrap_info") or {} for e in audit.entries(audit_start)
             if e.get("type") == "response" and e.get("request", {}).get("path", "").startswith("auth/token/create/")]
    accessors = [a for w in wraps for a in (w.get("accessor"), w.get("wrapped_accessor")) if a]
    alive = check_gone(vault, args, accessors, args.concurrency, problems)
    delete_namespace(kube, ns)
    # The raw records go with the namespace; they must not count as the operator's.
    st.update({"raw": raw, "creates": creates, "records": len(records), "records_with_data": with_data,
               "live_after": alive, "problems": problems, "correct": not problems,
               "ratio_to_raw": st["per_s"] / raw["per_s"],
               "ratio_to_raw_with_record": st["per_s"] / raw["with_record"]["per_s"], "concurrency": c})
    log(f"request correctness: {'OK' if not problems else '; '.join(problems)}")
    return st


op_proc_holder = [None]


def soak(args, kube, ns, bindings, op, created, served, lock, cond):
    """Churns the burst's pods for --soak minutes: every second deletes --soak-rate served pods
    (oldest first) and creates as many new ones, while the operator's RSS is sampled every 10 s.
    Then waits until every new pod is served. Growth = median RSS of the last two minutes over
    that of the first two."""
    rate, c = args.soak_rate, args.concurrency
    log(f"soak: {args.soak} min of churn, {rate} pods deleted and {rate} created per second")
    start = time.monotonic()
    end = start + args.soak * 60
    samples, gone, lat_soak = [], set(), []
    oldest = iter(list(created))
    k = 0

    def delete(name):
        s, body = kube.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}")
        if s != 404:
            check(s, body, "delete pod")

    def create(name, j):
        t = time.monotonic()
        check(*kube.request("POST", f"/api/v1/namespaces/{ns}/pods", pod_manifest(name, f"agent-{j % bindings}", bindings)), "pod")
        with lock:
            created[name] = t

    with ThreadPoolExecutor(c) as ex:
        while (tick := time.monotonic()) < end:
            victims = []
            for p in oldest:
                if p in served:
                    victims.append(p)
                if len(victims) == rate:
                    break
            names = [f"soak-{k + i}" for i in range(rate)]
            list(ex.map(delete, victims))
            gone.update(victims)
            list(ex.map(create, names, range(k, k + rate)))
            k += rate
            if not samples or tick - samples[-1][0] >= 10:
                samples.append((tick, op["rss"].read().get("VmRSS")))
                if len(samples) % 6 == 1:
                    log(f"soak: {(tick - start) / 60:.1f} min, {k} pods created, {len(gone)} deleted, "
                        f"RSS {fmt(samples[-1][1], 'MiB')}")
            time.sleep(max(0.0, tick + 1 - time.monotonic()))
    with cond:
        cond.wait_for(lambda: all(f"soak-{i}" in served for i in range(k)), timeout=args.timeout)
    lat_soak = sorted(served[f"soak-{i}"] - created[f"soak-{i}"] for i in range(k) if f"soak-{i}" in served)

    def median(xs):
        xs = sorted(x for x in xs if x is not None)
        return xs[len(xs) // 2] if xs else None

    first = median(r for t, r in samples if t - start < 120)
    last = median(r for t, r in samples if end - t <= 120)
    result = {"minutes": args.soak, "rate_per_s": rate, "created": k, "deleted": len(gone),
              "served": len(lat_soak), "p99_s": pct(lat_soak, 99) if lat_soak else None,
              "rss_first_2min_mib": first, "rss_last_2min_mib": last,
              "rss_max_mib": max((r for _, r in samples if r), default=None),
              "rss_samples_mib": [(round(t - start), r) for t, r in samples]}
    result["growth"] = (last / first - 1) if first and last else None
    log(f"soak: {k} created, {len(gone)} deleted, {len(lat_soak)}/{k} served (p99 {fmt(result['p99_s'])}); "
        f"RSS first 2 min {fmt(first, 'MiB')}, last 2 min {fmt(last, 'MiB')}, max {fmt(result['rss_max_mib'], 'MiB')}")
    return result


def delete_pods(kube, ns, c):
    """Deletes every pod of `ns` one by one, C at a time, 500 names per listing (a single
    delete-collection of 10,000 pods outlasts the API server's 60 s request timeout, which then
    stops it half-way)."""
    while True:
        s, body = kube.request("GET", f"/api/v1/namespaces/{ns}/pods?limit=500")
        names = [p["metadata"]["name"] for p in check(s, body, "list pods")["items"]
                 if not p["metadata"].get("deletionTimestamp")]
        if not names:
            return

        def delete(name):
            s, body = kube.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}")
            if s != 404:
                check(s, body, "delete pod")

        with ThreadPoolExecutor(c) as ex:
            list(ex.map(delete, names))


# ---------------------------------------------------------------- report


def accessor_state(vault, args, accessor):
    """'live', 'gone' (Vault says the accessor is invalid), or what else Vault answered: a
    sealed or unreachable Vault, or a wrong root token, must not pass for 'gone'."""
    s, body = vault.request("POST", "/v1/auth/token/lookup-accessor", {"accessor": accessor},
                            {"X-Vault-Token": args.root_token})
    if s == 200:
        return "live"
    if s == 400 and "invalid accessor" in str(body):
        return "gone"
    return f"HTTP {s}"


def check_gone(vault, args, accessors, concurrency, problems):
    """Counts the accessors still live; anything neither live nor gone is a problem."""
    with ThreadPoolExecutor(concurrency) as ex:
        states = list(ex.map(lambda a: accessor_state(vault, args, a), accessors))
    alive = states.count("live")
    if alive:
        problems.append(f"{alive} wraps or tokens still alive after their pods were deleted")
    odd = [st for st in states if st not in ("live", "gone")]
    if odd:
        problems.append(f"{len(odd)} accessor lookups answered neither live nor gone: {odd[:3]}")
    if not accessors:
        problems.append("no accessor to check")
    return alive


def served_wrap_accessor(audit, since):
    """The wrap accessor of the first mint since `since` (outstanding at the steady state)."""
    for e in audit.entries(since):
        if e.get("type") == "response" and e.get("request", {}).get("path", "").startswith("auth/token/create/"):
            acc = (e.get("response", {}).get("wrap_info") or {}).get("accessor")
            if acc:
                return acc
    return None


def restart_phase(args, audit, op, outstanding):
    """Restarts the operator with every wrap of the burst outstanding: how long until it is
    ready, whether it mints anything, and how hard it looks wraps up right after (its record
    of the last lookups was in memory)."""
    log(f"restart: SIGTERM to the operator with {outstanding} wraps outstanding, then a new one")
    op["hwm"] = max(op.get("hwm") or 0, op["rss"].read().get("VmHWM") or 0)
    op["proc"].send_signal(signal.SIGTERM)
    op["proc"].wait(30)
    audit_start = audit.offset()
    t = time.monotonic()
    op["proc"] = start_operator(args, op["env"], op["port"])
    ready_s = time.monotonic() - t
    op["rss"] = Rss(op["proc"].pid)
    window = 10.0
    time.sleep(window)
    counts = request_counts(audit.entries(audit_start))
    per_s = {k: v / (ready_s + window) for k, v in counts.items()}
    result = {"outstanding": outstanding, "ready_s": ready_s, "mints": counts.get("auth/token/create", 0),
              "rss_mib_after": op["rss"].read().get("VmRSS"),
              "requests_per_s_first_10s": per_s, "max_lookups_per_second": args.max_lookups}
    log(f"restart: ready in {ready_s:.2f} s, {result['mints']} mints, "
        f"{per_s.get('sys/wrapping/lookup', 0):.0f} lookups/s over the first {ready_s + window:.0f} s, "
        f"RSS {fmt(result['rss_mib_after'], 'MiB')} {window:.0f} s after ready")
    return result


def hold_phase(args, kube, vault, audit, op, ns, concurrency):
    """Plays the agents: unwraps every pod's wrap (read from its record), waits until the
    operator renewed each held token once, then counts over half a renewal window what keeping
    them alive costs Vault: every held token renewed once per half window, no lookups with no
    wrap outstanding, and every token still live after it (Vault ends one not renewed)."""
    records, cont = [], ""
    while True:
        s, body = kube.request("GET", f"/api/v1/namespaces/{ns}/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcubbyhole&limit=500"
                               + (f"&continue={urllib.parse.quote(cont)}" if cont else ""))
        body = check(s, body, "list records")
        records += [r for r in body["items"] if (r.get("data") or {}).get("token")]
        cont = body["metadata"].get("continue")
        if not cont:
            break
    log(f"hold: unwrapping the {len(records)} delivered wraps, as the pods' agents would")
    hold_start = audit.offset()

    def unwrap(record):
        wrap = base64.b64decode(record["data"]["token"]).decode()
        s, body = vault.request("POST", "/v1/sys/wrapping/unwrap", None, {"X-Vault-Token": wrap})
        return (body or {}).get("auth", {}).get("accessor") if s == 200 else None

    with ThreadPoolExecutor(concurrency) as ex:
        held = [a for a in ex.map(unwrap, records) if a]
    problems = []
    if len(held) != len(records):
        problems.append(f"{len(records) - len(held)} of {len(records)} wraps could not be unwrapped")
    if not held:
        problems.append("no token held")
        return {"held": 0, "problems": problems}
    # The first renewal of each held token comes once the operator's lookup sees its wrap taken.
    # Which tokens were renewed, not how many renewals: "renews some tokens twice, never others"
    # must not pass.
    first_wave = time.monotonic()
    held_set, offset, renewed = set(held), hold_start, set()
    deadline = first_wave + 120 + 2 * len(held) / max(args.max_lookups, 1)
    while not held_set <= renewed and time.monotonic() < deadline:
        time.sleep(1)
        end = audit.offset()
        renewed |= renewed_accessors(audit.entries(offset, end))
        offset = end
    first_wave_s = time.monotonic() - first_wave
    if not held_set <= renewed:
        problems.append(f"{len(held_set - renewed)} of {len(held)} held tokens never renewed within {first_wave_s:.0f} s")
    span = max(10.0, args.renewal_window_s / 2)
    log(f"hold: {len(held)} tokens held, first renewals done in {first_wave_s:.1f} s; counting over {span:.0f} s "
        f"(half the {args.renewal_window} renewal window)")
    span_start, span_from = audit.offset(), time.monotonic()
    time.sleep(span)
    rss = sorted(op["rss"].between(span_from, time.monotonic()))
    span_end = audit.offset()
    counts = request_counts(audit.entries(span_start, span_end))
    renewals = counts.get("auth/token/renew-accessor", 0)
    lookups = counts.get("sys/wrapping/lookup", 0)
    # Every held token renewed within the half window, with a short grace for the rounds that
    # came due at its very end.
    grace = min(10.0, span / 10)
    renewed_in_span = renewed_accessors(audit.entries(span_start, span_end))
    late = held_set - renewed_in_span
    if late:
        time.sleep(grace)
        late -= renewed_accessors(audit.entries(span_end, audit.offset()))
    if late:
        problems.append(f"{len(late)} of {len(held)} held tokens not renewed within half the window + {grace:.0f} s")
    with ThreadPoolExecutor(concurrency) as ex:
        states = list(ex.map(lambda a: accessor_state(vault, args, a), held))
    if states.count("live") != len(held):
        problems.append(f"{len(held) - states.count('live')} held tokens not live after {span:.0f} s of renewals")
    per_token = renewals / len(held)
    result = {"held": len(held), "renewal_window": args.renewal_window, "span_s": span,
              "first_wave_s": first_wave_s, "renewals": renewals, "renewals_per_s": renewals / span,
              "renewals_per_token_per_half_window": per_token * (args.renewal_window_s / 2) / span,
              "expected_renewals_per_s": len(held) / (args.renewal_window_s / 2),
              "lookups_per_s": lookups / span, "live_after": states.count("live"),
              "renewed_in_half_window": len(held_set) - len(late),
              "rss_mib": rss[len(rss) // 2] if rss else None, "problems": problems}
    log(f"hold: {renewals} renewals in {span:.0f} s ({result['renewals_per_s']:.1f}/s, expected "
        f"{result['expected_renewals_per_s']:.1f}/s), {result['renewals_per_token_per_half_window']:.2f} per token per "
        f"half window, {result['renewed_in_half_window']}/{len(held)} tokens renewed in it, "
        f"{result['lookups_per_s']:.1f} lookups/s, {result['live_after']}/{len(held)} tokens live"
        f"{' (' + '; '.join(problems) + ')' if problems else ''}")
    return result


def fmt(v, unit="s"):
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
    return f"{v:.1f} {unit}"


def write_report(args, raw, backlog, bursts, request, hwm, out_dir, total_s):
    goals = []
    if backlog:
        backlog["ratio_to_raw"] = backlog["per_s"] / raw["per_s"] if raw else None
        if raw:
            goals.append((f"operator pipeline alone ({backlog['label']}): >= 0.8x the raw two-write pipeline",
                          backlog["ratio_to_raw"] >= 0.8, f"{backlog['ratio_to_raw']:.2f}x"))
        goals.append((f"exactly once ({backlog['label']})", backlog["correct"], "; ".join(backlog["problems"]) or "ok"))
    if request:
        goals.append((f"on request: p99 ask -> wrap < 1 s ({args.pods} agents)", request["p99_s"] < 1, fmt(request["p99_s"])))
        goals.append((f"on request: >= 0.8x the raw TokenReview + mint pipeline", request["ratio_to_raw"] >= 0.8,
                      f"{request['ratio_to_raw']:.2f}x ({request['ratio_to_raw_with_record']:.2f}x of TokenReview + mint + record create)"))
        goals.append(("on request: one create per ask, no record carries data, nothing live after",
                      request["correct"], "; ".join(request["problems"]) or "ok"))
    for b in bursts:
        ratio = b["per_s"] / raw["per_s"] if raw else None
        b["ratio_to_raw"] = ratio
        b["ratio_to_pod_start"] = b["per_s"] / raw["pod_start"]["per_s"] if raw else None
        goals.append((f"p99 < 1 s ({b['label']})", b["p99_s"] is not None and b["p99_s"] < 1, fmt(b["p99_s"])))
        if ratio is not None:
            goals.append((f"throughput >= 0.8x raw ({b['label']})", ratio >= 0.8, f"{ratio:.2f}x"))
            # Like for like: the raw pod start carries the burst's own work per pod (the
            # client's pod create, then the mint and the Secret create).
            goals.append((f"throughput >= 0.8x the raw pod start ({b['label']})", b["ratio_to_pod_start"] >= 0.8,
                          f"{b['ratio_to_pod_start']:.2f}x"))
        goals.append((f"exactly once, nothing live after ({b['label']})", b["correct"], "; ".join(b["problems"]) or "ok"))
        if b["pods"] >= 10000 and b["rss_steady_mib"]:
            goals.append((f"RSS steady < 64 MiB ({b['label']})", b["rss_steady_mib"] < 64, fmt(b["rss_steady_mib"], "MiB")))
        r = b.get("restart")
        if r:
            goals.append((f"restart: ready < 5 s, 0 mints ({r['outstanding']} outstanding)",
                          r["ready_s"] < 5 and r["mints"] == 0, f"{r['ready_s']:.2f} s, {r['mints']} mints"))
        h = b.get("hold")
        if h and h.get("held"):
            # At most one renewal per token per half window (each comes when its round runs,
            # a little after it is due: fewer is fine), and each in time: every token still live.
            goals.append((f"held tokens: at most 1 renewal per half window and every one in time, no lookups once "
                          f"every wrap is taken ({b['label']})",
                          h["renewals_per_token_per_half_window"] <= 1.2 and h["lookups_per_s"] < 1
                          and h["live_after"] == h["held"]
                          and h.get("renewed_in_half_window") == h["held"],
                          f"{h.get('renewed_in_half_window')} of {h['held']} renewed within the half window, "
                          f"{h['renewals_per_token_per_half_window']:.2f} renewals per token per half window, "
                          f"{h['renewals_per_s']:.1f} renewals/s for {h['held']} tokens, {h['lookups_per_s']:.1f} lookups/s"))
        so = b.get("soak")
        if so:
            growth = so["growth"]
            goals.append((f"no RSS growth over a {so['minutes']}-minute churn soak (last 2 min vs first 2 min, within 5%)",
                          growth is not None and growth <= 0.05 and so["served"] == so["created"],
                          f"{fmt(so['rss_first_2min_mib'], 'MiB')} -> {fmt(so['rss_last_2min_mib'], 'MiB')}"
                          f" ({(growth or 0) * 100:+.1f}%), {so['served']}/{so['created']} new pods served"))
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
        "operator_bin": args.operator_bin,
        "settings": {"pods": args.pods, "concurrency": args.concurrency, "bindings": args.bindings,
                     "lookup_period": args.lookup_period, "wrap_ttl": WRAP_TTL,
                     "operator_config": args.operator_config},
        "raw": {k: v for k, v in (raw or {}).items() if k not in ("latencies", "pod_start")},
        "pod_start": {k: v for k, v in (raw or {}).get("pod_start", {}).items() if k != "latencies"},
        "backlog": {k: v for k, v in (backlog or {}).items() if k != "latencies"},
        "bursts": [{k: v for k, v in b.items() if k != "latencies"} for b in bursts],
        "request": {k: (v if k != "raw" else {rk: (rv if rk != "with_record" else {wk: wv for wk, wv in rv.items() if wk != "latencies"})
                                              for rk, rv in v.items() if rk != "latencies"})
                    for k, v in (request or {}).items() if k != "latencies"},
        "operator_rss_hwm_mib": hwm,
        "goals": [{"goal": g, "met": m, "value": v} for g, m, v in goals],
        "total_s": total_s,
    }
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        "# cubbyhole bench report", "",
        f"{report['when']}, {os.cpu_count()} CPUs, `{os.path.relpath(args.operator_bin, ROOT)}`, "
        f"{args.concurrency} concurrent clients, lookupPeriod {args.lookup_period}, wrapTTL {WRAP_TTL}"
        f"{', extra operator config: `' + args.operator_config + '`' if args.operator_config else ''}. "
        f"Whole run {total_s:.0f} s.", "",
        "![latency CDF](latency-cdf.svg)", "",
        "| run | n | p50 | p90 | p99 | max | per s | vs raw | Vault req/pod (until served) | RSS peak | RSS steady |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if raw:
        lines.append(f"| raw two-write pipeline | {raw['count']} | {fmt(raw['p50_s'])} | {fmt(raw['p90_s'])} | {fmt(raw['p99_s'])} | "
                     f"{fmt(raw['max_s'])} | {raw['per_s']:.0f} | 1.00x | 1 create | - | - |")
        pr = raw["pod_start"]
        lines.append(f"| raw pod start (pod create, mint, Secret create) | {pr['count']} | {fmt(pr['p50_s'])} | {fmt(pr['p90_s'])} | "
                     f"{fmt(pr['p99_s'])} | {fmt(pr['max_s'])} | {pr['per_s']:.0f} | {pr['per_s'] / raw['per_s']:.2f}x | 1 create | - | - |")
    if backlog:
        ratio_text = "-" if backlog["ratio_to_raw"] is None else f"{backlog['ratio_to_raw']:.2f}x"
        lines.append(f"| operator, {backlog['label']} (from the binding's create) | {backlog['served']}/{backlog['pods']} | "
                     f"{fmt(backlog['p50_s'])} | {fmt(backlog['p90_s'])} | {fmt(backlog['p99_s'])} | {fmt(backlog['max_s'])} | "
                     f"{backlog['per_s']:.0f} | {ratio_text} | {backlog['minted'] / max(backlog['pods'], 1):.2f} create | - | - |")
    for b in bursts:
        ratio_text = "-" if b["ratio_to_raw"] is None else f"{b['ratio_to_raw']:.2f}x ({b['ratio_to_pod_start']:.2f}x of the raw pod start)"
        req = ", ".join(f"{k} {v / b['pods']:.2f}" for k, v in sorted(b["vault_requests_until_served"].items()))
        lines.append(f"| operator, {b['label']} | {b['served']}/{b['pods']} | {fmt(b['p50_s'])} | {fmt(b['p90_s'])} | "
                     f"{fmt(b['p99_s'])} | {fmt(b['max_s'])} | {b['per_s']:.0f} | "
                     f"{ratio_text} | "
                     f"{req} | {fmt(b['rss_peak_mib'], 'MiB')} | {fmt(b['rss_steady_mib'], 'MiB')} |")
    if request:
        rr = request["raw"]
        lines.append(f"| raw request pipeline (TokenReview + wrapped create), {request['concurrency']} clients | {rr['count']} | "
                     f"{fmt(rr['p50_s'])} | {fmt(rr['p90_s'])} | {fmt(rr['p99_s'])} | {fmt(rr['max_s'])} | {rr['per_s']:.0f} | 1.00x | 1 create | - | - |")
        wr = rr["with_record"]
        lines.append(f"| raw request pipeline with the record (+ Secret create), {request['concurrency']} clients | {wr['count']} | "
                     f"{fmt(wr['p50_s'])} | {fmt(wr['p90_s'])} | {fmt(wr['p99_s'])} | {fmt(wr['max_s'])} | {wr['per_s']:.0f} | "
                     f"{wr['per_s'] / rr['per_s']:.2f}x | 1 create | - | - |")
        lines.append(f"| operator on request (ask -> wrap), {request['concurrency']} clients | {request['count']} | "
                     f"{fmt(request['p50_s'])} | {fmt(request['p90_s'])} | {fmt(request['p99_s'])} | {fmt(request['max_s'])} | "
                     f"{request['per_s']:.0f} | {request['ratio_to_raw']:.2f}x ({request['ratio_to_raw_with_record']:.2f}x of the pipeline with the record) | "
                     f"{request['creates'] / max(request['count'], 1):.2f} create | - | - |")
    lines += ["", f"Operator VmHWM over the whole run: {fmt(hwm, 'MiB')}.", "",
              f"CPU seconds spent until every pod was served (the machine has {os.cpu_count()} cores):", ""]
    if raw:
        lines.append(f"- raw two-write pipeline: {cpu_text(raw['cpu_s'], raw['count'])}")
        lines.append(f"- raw pod start: {cpu_text(raw['pod_start']['cpu_s'], raw['pod_start']['count'])}")
    if backlog:
        lines.append(f"- operator, {backlog['label']}: {cpu_text(backlog['cpu_s'], backlog['pods'])}")
    for b in bursts:
        lines.append(f"- operator, {b['label']}: {cpu_text(b['cpu_s'], b['pods'])}")
    if request:
        lines.append(f"- raw request pipeline: {cpu_text(request['raw']['cpu_s'], request['raw']['count'])}")
        lines.append(f"- operator on request: {cpu_text(request['cpu_s'], request['count'])}")
        lines.append(f"- API server writes per ask on request: {request['api_writes_per_pod'] or 'unknown'}")
    lines += ["", "API server writes per pod over the same span (its `apiserver_request_total`; the operator "
              "runs include the clients' pod creates):", ""]
    if raw:
        lines.append(f"- raw two-write pipeline: {raw['api_writes_per_pod'] or 'unknown'}")
        lines.append(f"- raw pod start: {raw['pod_start']['api_writes_per_pod'] or 'unknown'}")
    if backlog:
        lines.append(f"- operator, {backlog['label']}: {backlog['api_writes_per_pod'] or 'unknown'}")
    for b in bursts:
        lines.append(f"- operator, {b['label']}: {b['api_writes_per_pod'] or 'unknown'}")
    lines += ["",
              "Latency: operator = pod create sent → wrapping token seen in the pod's Secret (watch); "
              "raw = mint request sent → Secret create answered; raw pod start = pod create sent → Secret create answered, "
              "the client's pod create and the two writes one pod start costs the operator, without watches, "
              "caches or planning (the ceiling of one write per pod start here); pods waiting = the binding's create sent → wrapping "
              "token seen, every pod created before it (the operator's pipeline alone, no pod creates competing for the machine). "
              "Per s: served / (last served − first create).", "",
              "Vault requests per second in steady state (5 s, every wrap outstanding, 10 s after the burst):", ""]
    for b in bursts:
        steady = ", ".join(f"{k} {v:.1f}/s" for k, v in sorted(b["vault_requests_per_s_steady"].items())) or "none"
        lines.append(f"- {b['label']}: {steady}")
    for b in bursts:
        r = b.get("restart")
        if r:
            lines += ["", f"Restart with {r['outstanding']} wraps outstanding ({b['label']}, maxLookupsPerSecond "
                      f"{r['max_lookups_per_second']}): ready {r['ready_s']:.2f} s after start, {r['mints']} new mints, "
                      + (", ".join(f"{k} {v:.1f}/s" for k, v in sorted(r["requests_per_s_first_10s"].items())) or "no Vault requests")
                      + f" from start to 10 s after ready; RSS then {fmt(r.get('rss_mib_after'), 'MiB')}."]
        h = b.get("hold")
        if h and h.get("held"):
            lines += ["", f"Held tokens ({b['label']}, renewalWindow {h['renewal_window']}): the bench unwrapped "
                      f"{h['held']} wraps; the operator renewed each once within {h['first_wave_s']:.0f} s, then over "
                      f"{h['span_s']:.0f} s (half the window) sent {h['renewals']} renewals ({h['renewals_per_s']:.1f}/s, "
                      f"expected {h['expected_renewals_per_s']:.1f}/s = held / half window) and "
                      f"{h['lookups_per_s']:.1f} wrap lookups/s; {h['live_after']}/{h['held']} tokens live after it; operator RSS "
                      f"over it {fmt(h['rss_mib'], 'MiB')}."]
        so = b.get("soak")
        if so:
            lines += ["", f"Churn soak ({b['label']}): {so['minutes']} min, {so['rate_per_s']} pods deleted and "
                      f"{so['rate_per_s']} created per second ({so['created']} created, {so['deleted']} deleted); "
                      f"{so['served']}/{so['created']} new pods served, p99 {fmt(so['p99_s'])}. Operator RSS, median of "
                      f"the first 2 min {fmt(so['rss_first_2min_mib'], 'MiB')}, of the last 2 min "
                      f"{fmt(so['rss_last_2min_mib'], 'MiB')}, max {fmt(so['rss_max_mib'], 'MiB')}. Samples (s, MiB): "
                      + ", ".join(f"{t}: {r:.1f}" for t, r in so["rss_samples_mib"] if r) + "."]
    lines += ["", "## Goals (issues 12 and 18)", "", "| goal | met | value |", "|---|---|---|"]
    lines += [f"| {g} | {'met' if m else 'NOT met'} | {v} |" for g, m, v in goals]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    series = ([("raw two-write pipeline", raw["latencies"]), ("raw pod start", raw["pod_start"]["latencies"])] if raw else []) + [(f"operator, {b['label']}", b["latencies"]) for b in bursts]
    if request:
        series += [("raw request pipeline", request["raw"]["latencies"]),
                   ("raw request pipeline with the record", request["raw"]["with_record"]["latencies"]),
                   ("operator on request", request["latencies"])]
    cdf_svg(series, os.path.join(out_dir, "latency-cdf.svg"))
    return report


# ---------------------------------------------------------------- main


def main():
    global WRAP_TTL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=500, help="pods per burst (and raw pipeline size)")
    ap.add_argument("--concurrency", "-c", type=int, default=8, help="concurrent clients")
    ap.add_argument("--bindings", default="1,50", help="one burst per entry: the burst's pods spread over that many bindings")
    ap.add_argument("--lookup-period", default="2s")
    ap.add_argument("--wrap-ttl", default=WRAP_TTL, help="the bindings' wrapTTL (a long one keeps every wrap outstanding through the restart)")
    ap.add_argument("--operator-config", default="", help="extra YAML lines for the operator config")
    ap.add_argument("--operator-bin", default="", help="skip the release build and run this binary")
    ap.add_argument("--dir", default=os.path.join(ROOT, "target", "bench"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench"))
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for a burst to be served")
    ap.add_argument("--keep-cluster", action="store_true", help="leave the control plane and OpenBao running")
    ap.add_argument("--no-raw", action="store_true")
    ap.add_argument("--max-lookups", type=int, default=100, help="the operator's maxLookupsPerSecond")
    ap.add_argument("--no-restart", action="store_true", help="skip the restart phase (after the last burst)")
    ap.add_argument("--soak", type=float, default=0, help="minutes of pod churn after each burst (before its restart); 0: none")
    ap.add_argument("--soak-rate", type=int, default=10, help="pods deleted and created per second during the soak")
    ap.add_argument("--no-request", action="store_true", help="skip the request-delivery phase")
    ap.add_argument("--no-backlog", action="store_true", help="skip the backlog phase (pods first, then their binding)")
    ap.add_argument("--no-hold", dest="hold", action="store_false",
                    help="skip the hold phase (after each burst's restart: unwrap every wrap, count renewals)")
    ap.add_argument("--renewal-window", default="1m", help="the operator's renewalWindow (the hold phase counts over half of it)")
    ap.add_argument("--request-concurrency", type=int, default=32, help="agents asking at once in the request phase")
    args = ap.parse_args()
    WRAP_TTL = args.wrap_ttl
    args.bindings = [int(b) for b in str(args.bindings).split(",") if b]
    args.run_id = str(int(time.time()))
    args.renewal_window_s = seconds(args.renewal_window)
    os.makedirs(args.dir, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)

    if not args.operator_bin:
        log("building the release operator (cargo build --release)")
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
        args.operator_bin = os.path.join(ROOT, "target", "release", "cubbyhole")
    args.operator_bin = os.path.abspath(args.operator_bin)
    log(f"starting the local control plane and OpenBao in {args.dir} (e2e/cluster-up.sh)")
    # A fresh cluster each run (OpenBao's audit device can only come from its start-up config).
    subprocess.run([os.path.join(ROOT, "e2e", "cluster-down.sh"), args.dir], capture_output=True)
    r = subprocess.run([os.path.join(ROOT, "e2e", "cluster-up.sh"), args.dir], capture_output=True, text=True,
                       env=dict(os.environ, CUBBYHOLE_BAO_AUDIT="1"))
    if r.returncode != 0:
        die(f"cluster-up failed:\n{r.stderr[-2000:]}")
    operator = None
    try:
        env = read_env(os.path.join(args.dir, "env"))
        with open(os.path.join(args.dir, "root-token")) as f:
            args.root_token = f.read().strip()
        with open(env["VAULT_TOKEN_FILE"]) as f:
            op_token = f.read().strip()
        vault = Http(env["VAULT_ADDR"])
        kube = kube_client(os.path.join(args.dir, "cluster"))
        audit = Audit(os.path.join(args.dir, "audit.log"))
        if not os.path.exists(audit.path):
            die("OpenBao has no audit log (cluster-up.sh with CUBBYHOLE_BAO_AUDIT=1)")
        raw = None if args.no_raw else raw_pipeline(args, kube, vault, op_token)
        if raw:
            raw["pod_start"] = raw_pipeline(args, kube, vault, op_token, pod_start=True)
        port = free_port()
        log(f"starting the operator ({os.path.relpath(args.operator_bin, ROOT)}) as its service account, Kubernetes auth to OpenBao")
        op = {"proc": start_operator(args, env, port), "env": env, "port": port}
        op["rss"] = Rss(op["proc"].pid)
        operator = op
        last = len(args.bindings) - 1
        op_proc_holder[0] = op["proc"]
        backlog = None if args.no_backlog else backlog_phase(args, kube, audit, op)
        bursts = [burst(args, kube, vault, audit, op, b, restart=(i == last and not args.no_restart))
                  for i, b in enumerate(args.bindings)]
        request = None if args.no_request else request_phase(args, kube, vault, audit, op_token)
        hwm = max(op.get("hwm") or 0, op["rss"].read().get("VmHWM") or 0) or None
        report = write_report(args, raw, backlog, bursts, request, hwm, args.out, time.monotonic() - T0)
    finally:
        if operator:
            operator["proc"].send_signal(signal.SIGTERM)
            try:
                operator["proc"].wait(10)
            except subprocess.TimeoutExpired:
                operator["proc"].kill()
        if not args.keep_cluster:
            subprocess.run([os.path.join(ROOT, "e2e", "cluster-down.sh"), args.dir], capture_output=True)
    print()
    with open(os.path.join(args.out, "report.md")) as f:
        print(f.read())
    log(f"report: {args.out}/report.md, report.json, latency-cdf.svg")
    if not report["backlog"].get("correct", True) or not all(b["correct"] for b in report["bursts"]) or not report["request"].get("correct", True):
        die("correctness check failed")


if __name__ == "__main__":
    main()
