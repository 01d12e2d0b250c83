"""Fault and load scenario for the studio app: concurrent annotators, a crash in the middle, a restart.

    .venv/bin/python benchmarks/fault_load.py                       # the full scenario: 20 annotators x 60 s
                                                                    # paced (every ~10 s), then closed loop
    .venv/bin/python benchmarks/fault_load.py --annotators 5 --duration 8 --json out.json   # CI-sized

What it does (all traffic goes to 127.0.0.1; every loop is bounded in count and time):

1. prepares a workspace (seed data + `--prompts` prompts with 3 candidate responses each) and starts the app as a
   subprocess: ``python -m neat_studio --workspace WS serve --model tiny --port P``;
1b. PACED (`--pace`, default 10 s): each annotator saves once every ~PACE s (a fast human) for `--duration`
   seconds while a preview and the embedder run: the save latency a person feels (targets p95 <= 500 ms, p99 <= 1 s);
2. LOAD (closed loop, saturation): `--annotators` simulated annotators (one gradio_client each) save rankings through the app's
   `/save_ranking` API route for `--duration` seconds, while a negative-prompt preview generation (`/run_preview`,
   tiny model) and the embedding job (`/embed`) run; halfway a backup is taken through `/backup`. Every save
   carries a unique token in its comment; a save is *acknowledged* when the API returned its annotation id.
   After the load a second backup is taken and every acknowledged save must be in it exactly once;
   the mid-load backup must open and hold the counts it reported;
3. CRASH: the annotators save again for `--crash-duration` seconds and the app is killed with SIGKILL at
   `--kill-at` seconds; the app is restarted on the same workspace (no repair step), one more save must succeed,
   the app is stopped (SIGINT) and the store is opened directly: schema version right, every save acknowledged
   before the kill (and all earlier ones) present exactly once.

Prints the figures (acknowledged, found, lost, duplicated, latency p50/p95/p99) and exits 1 when a guarantee
failed. `run_scenario(...)` is what the CI test (tests/fault/test_load_crash.py) calls with a small load.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ANNOTATOR = "local"  # the app runs without login: every API save is by the local user
TOKEN_PREFIX = "fault-token:"
REQUEST_TIMEOUT_S = 60.0  # one save may wait this long, then it counts as an error (never acknowledged)


def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    ys = sorted(xs)
    k = (len(ys) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ys) - 1)
    return ys[lo] + (ys[hi] - ys[lo]) * (k - lo)


def latency_stats(lat_s: list[float]) -> dict:
    return {"n": len(lat_s), **{f"p{int(q * 100)}_ms": (round(1000 * percentile(lat_s, q), 1) if lat_s else None)
                                 for q in (0.5, 0.95, 0.99)},
            "max_ms": round(1000 * max(lat_s), 1) if lat_s else None}


# -- workspace and app process --------------------------------------------------------------------------------
def prepare_workspace(ws: Path, n_prompts: int = 30) -> dict:
    """Seed data plus `n_prompts` prompts with 3 candidates each. Returns {"items": [(prompt_id, [rid..])],
    "negative": a negative prompt ref}."""
    from neat_studio.config import Workspace
    from neat_studio.studio import Studio

    with Studio(Workspace(ws).ensure(), model_spec="tiny") as st:
        st.init(actor="fault")
        recs = [{"messages": [{"role": "user", "content": f"fault-load question {i}: how do I do thing {i}?"}],
                 "source": "fault-load", "tags": ["fault-load"], "split": "train",
                 "responses": [{"text": f"answer {j} to question {i}", "origin": "dataset", "rank": None}
                               for j in range(3)]} for i in range(n_prompts)]
        st.store.import_records(recs, actor="fault")
        items = []
        for p in st.store.list_prompts(tag="fault-load", limit=10_000):
            rids = [r["id"] for r in st.store.list_responses(p["id"])]
            if len(rids) >= 2:
                items.append((p["id"], rids))
        neg = [v["ref"] for v in st.store.all_system_prompt_versions() if v["kind"] == "negative"]
    return {"items": items, "negative": neg[0] if neg else None}


class AppProcess:
    """`python -m neat_studio --workspace WS serve --model tiny --port P` in its own session."""

    def __init__(self, ws: Path, log_path: Path, env: dict | None = None):
        self.ws, self.log_path, self.env = Path(ws), Path(log_path), env
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 240.0) -> float:
        """Start and wait until the app answers HTTP; returns the seconds it took."""
        self.port = free_port()
        env = {**os.environ, **(self.env or {})}
        env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        t0 = time.time()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "neat_studio", "--workspace", str(self.ws), "serve", "--model", "tiny",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO), env=env,
                start_new_session=True)
        deadline = t0 + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {self.proc.returncode} during start; log:\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=5) as r:
                    if r.status == 200:
                        return time.time() - t0
            except OSError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"the app did not answer within {timeout:.0f} s; log:\n" + self.log_tail())

    def kill(self) -> None:
        """SIGKILL the app (its whole process group)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """Ctrl-C (SIGINT) so the app checkpoints and closes the store; SIGKILL after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# -- simulated users ----------------------------------------------------------------------------------------
def _client(url: str, timeout: float = 60.0):
    from gradio_client import Client

    deadline = time.time() + timeout
    while True:
        try:
            return Client(url, verbose=False, download_files=False)
        except Exception:  # noqa: BLE001 - the app may be busy; bounded retry
            if time.time() > deadline:
                raise
            time.sleep(0.5)


class Annotators:
    """N threads saving rankings through `/save_ranking` until `stop_at` (or `max_saves` each)."""

    def __init__(self, url: str, items: list, n: int, duration: float, tag: str, max_saves: int = 100_000,
                 pace: float | None = None):
        """`pace`: seconds between one annotator's saves (a human pace: each starts at a random offset and saves
        every `pace` s +-20 %); None = closed loop (the next save as soon as the last returned: saturation)."""
        self.url, self.items, self.n, self.duration, self.tag = url, items, n, duration, tag
        self.pace = pace
        self.max_saves = max_saves
        self.acked: list[dict] = []      # {"token", "annotation_id", "latency_s", "t"}
        self.attempted: list[str] = []   # every token sent (acknowledged or not)
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.stop_at = 0.0

    def start(self, connect_timeout: float = 120.0) -> "Annotators":
        """Connect every annotator's client first (not timed), then start the clock."""
        self._go = threading.Event()
        self._ready = threading.Semaphore(0)
        for i in range(self.n):
            t = threading.Thread(target=self._work, args=(i,), daemon=True, name=f"annotator-{i}")
            t.start()
            self.threads.append(t)
        deadline = time.time() + connect_timeout
        for _ in range(self.n):
            self._ready.acquire(timeout=max(0.1, deadline - time.time()))
        self.stop_at = time.time() + self.duration
        self._go.set()
        return self

    def join(self, grace: float = REQUEST_TIMEOUT_S + 30) -> None:
        deadline = self.stop_at + grace
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.time()))

    def _work(self, i: int) -> None:
        rng = random.Random(f"{self.tag}-{i}")
        try:
            client = _client(self.url)
        except Exception as e:  # noqa: BLE001
            with self._lock:
                self.errors.append(f"annotator {i}: no client: {e}")
            return
        finally:
            self._ready.release()
        self._go.wait(timeout=300)
        n = 0
        next_at = time.time() + (rng.uniform(0, self.pace) if self.pace else 0.0)
        while n < self.max_saves:
            if self.pace:
                time.sleep(max(0.0, next_at - time.time()))
                next_at += self.pace * rng.uniform(0.8, 1.2)
            if time.time() >= self.stop_at:
                break
            n += 1
            pid, rids = self.items[rng.randrange(len(self.items))]
            rids = list(rids)
            rng.shuffle(rids)
            cut = rng.randrange(1, len(rids))
            ranking = [rids[:cut], rids[cut:]]
            token = f"{TOKEN_PREFIX}{self.tag}-{i}-{n}-{uuid.uuid4().hex[:10]}"
            with self._lock:
                self.attempted.append(token)
            t0 = time.time()
            try:
                job = client.submit(pid, json.dumps(ranking), "{}", f"{token} <b>load</b> test",
                                    api_name="/save_ranking")
                out = json.loads(job.result(timeout=REQUEST_TIMEOUT_S))
                dt = time.time() - t0
                with self._lock:
                    self.acked.append({"token": token, "annotation_id": out["annotation_id"], "latency_s": dt,
                                       "t": time.time(), "server_s": (out.get("server_ms") or 0) / 1000})
            except Exception as e:  # noqa: BLE001 - a refused/failed save is simply not acknowledged
                with self._lock:
                    self.errors.append(f"annotator {i}: {type(e).__name__}: {str(e)[:200]}")
                time.sleep(0.2)


def background_preview(url: str, ref: str, stop_at: float, out: dict, max_runs: int = 50) -> None:
    """Negative-prompt previews (tiny model) back to back until `stop_at` (at least one)."""
    try:
        c = _client(url)
        runs = 0
        while runs < max_runs and (runs == 0 or time.time() < stop_at):
            job = c.submit(ref, "(no system prompt)", runs, "random", 2, "", "", api_name="/run_preview")
            res = job.result(timeout=300)
            runs += 1
            out.setdefault("preview_msgs", []).append(str(res[0])[:200])
        out["previews"] = runs
    except Exception as e:  # noqa: BLE001
        out["preview_error"] = f"{type(e).__name__}: {e}"


def background_embed(url: str, out: dict) -> None:
    """The embedding job (`/embed`): embeds every prompt that has no vector yet."""
    try:
        c = _client(url)
        t0 = time.time()
        out["embed_info"] = str(c.submit(api_name="/embed").result(timeout=600))[:300]
        out["embed_s"] = round(time.time() - t0, 1)
    except Exception as e:  # noqa: BLE001
        out["embed_error"] = f"{type(e).__name__}: {e}"


def api_backup(url: str, dest: Path) -> dict:
    c = _client(url)
    return json.loads(c.submit(str(dest), False, api_name="/backup").result(timeout=300))


# -- checks -------------------------------------------------------------------------------------------------
def stored_tokens(store, items) -> Counter:
    """How many annotations carry each token (annotations of the load's prompts by the local user)."""
    c: Counter = Counter()
    for pid, _ in items:
        for a in store.annotation_history(pid, ANNOTATOR):
            cm = a.get("comment") or ""
            if cm.startswith(TOKEN_PREFIX):
                c[cm.split(" ", 1)[0]] += 1
    return c


def integrity(acked_tokens: list[str], stored: Counter, attempted: list[str] | None = None) -> dict:
    acked = set(acked_tokens)
    lost = sorted(t for t in acked if stored.get(t, 0) == 0)
    dup = sorted(t for t, k in stored.items() if k > 1)
    unknown = sorted(set(stored) - set(attempted)) if attempted is not None else []
    return {"acknowledged": len(acked), "found": sum(1 for t in acked if stored.get(t, 0) >= 1),
            "lost": len(lost), "duplicated": len(dup), "unacknowledged_but_stored":
                len([t for t in stored if t not in acked]), "unknown_tokens": len(unknown),
            "lost_examples": lost[:5], "duplicated_examples": dup[:5]}


def check_backup(path: Path, reported: dict) -> dict:
    from neat_studio.store import SCHEMA_VERSION, Store

    with Store(path) as b:
        counts = b.counts()
        ver = b.schema_version
    return {"opens": True, "schema_version": ver, "schema_ok": ver == SCHEMA_VERSION,
            "counts_match": counts == reported.get("counts"), "counts": counts}


# -- the scenario -------------------------------------------------------------------------------------------
def paced_phase(url: str, items: list, annotators: int, duration: float, pace: float, prep: dict,
                preview: bool, embed: bool) -> dict:
    """`annotators` people each saving every ~`pace` s for `duration` s while a preview and the embedder run:
    the latency a person feels (end to end through the HTTP API the browser uses)."""
    bg: dict = {}
    ann = Annotators(url, items, annotators, duration, "paced", pace=pace).start()
    threads = []
    if preview and prep["negative"]:
        threads.append(threading.Thread(target=background_preview, daemon=True,
                                        args=(url, prep["negative"], ann.stop_at, bg)))
    if embed:
        threads.append(threading.Thread(target=background_embed, args=(url, bg), daemon=True))
    for t in threads:
        t.start()
    ann.join()
    for t in threads:
        t.join(timeout=max(1.0, ann.stop_at + 300 - time.time()))
    return {"_acked": [a["token"] for a in ann.acked], "_attempted": list(ann.attempted),
            "annotators": annotators, "pace_s": pace, "duration_s": duration, "acknowledged": len(ann.acked),
            "attempted": len(ann.attempted), "errors": len(ann.errors), "error_examples": ann.errors[:3],
            "saves_per_s": round(len(ann.acked) / duration, 2), "previews": bg.get("previews"),
            "latency": latency_stats([a["latency_s"] for a in ann.acked]),
            # where the time goes: inside the save handler (auth, validation, the store's write lock and the write)
            # vs everything else (HTTP, gradio's queue, waiting for a worker thread, the GIL)
            "handler": latency_stats([a["server_s"] for a in ann.acked]),
            "outside_handler": latency_stats([a["latency_s"] - a["server_s"] for a in ann.acked])}


def run_scenario(ws: Path, *, annotators: int = 20, duration: float = 60.0, crash_duration: float | None = None,
                 kill_at: float | None = None, n_prompts: int = 30, preview: bool = True, embed: bool = True,
                 pace: float | None = None, log=print) -> dict:
    ws = Path(ws)
    ws.mkdir(parents=True, exist_ok=True)
    crash_duration = duration / 2 if crash_duration is None else crash_duration
    kill_at = crash_duration / 2 if kill_at is None else kill_at
    prep = prepare_workspace(ws, n_prompts)
    items = prep["items"]
    app = AppProcess(ws, ws / "app.log")
    rep: dict = {"annotators": annotators, "duration_s": duration, "crash_duration_s": crash_duration,
                 "kill_at_s": kill_at, "prompts": len(items)}
    try:
        rep["start_s"] = round(app.start(), 1)
        log(f"app up on {app.url} in {rep['start_s']} s")
        if pace:  # phase 0: a human pace (the latency target), before the closed-loop saturation below
            paced = paced_phase(app.url, items, annotators, duration, pace, prep, preview, embed)
            pre_acked, pre_attempted = paced.pop("_acked"), paced.pop("_attempted")  # they count for integrity too
            rep["paced"] = paced
            log(f"paced: {json.dumps(rep['paced'])}")
        else:
            pre_acked, pre_attempted = [], []
        # -- phase 1: load with a preview generation and the embedding job ------------------------------------
        bg: dict = {}
        ann = Annotators(app.url, items, annotators, duration, "load").start()
        bg_threads = []
        if preview and prep["negative"]:
            bg_threads.append(threading.Thread(target=background_preview, daemon=True,
                                               args=(app.url, prep["negative"], ann.stop_at, bg)))
        if embed:
            bg_threads.append(threading.Thread(target=background_embed, args=(app.url, bg), daemon=True))
        for t in bg_threads:
            t.start()
        time.sleep(max(0.0, duration / 2))
        mid = ws / "backups" / "mid-load.duckdb"
        t0 = time.time()
        try:
            mid_rep = api_backup(app.url, mid)
            rep["mid_backup_s"] = round(time.time() - t0, 2)
        except Exception as e:  # noqa: BLE001
            mid_rep = {"error": str(e)}
        ann.join()
        for t in bg_threads:
            t.join(timeout=max(1.0, ann.stop_at + 300 - time.time()))
        rep["background"] = {k: v for k, v in bg.items() if k != "preview_msgs"}
        if bg.get("preview_msgs"):
            rep["background"]["last_preview_msg"] = bg["preview_msgs"][-1]
        after = ws / "backups" / "after-load.duckdb"
        after_rep = api_backup(app.url, after)
        from neat_studio.store import Store

        rep["mid_backup"] = check_backup(mid, mid_rep) if "error" not in mid_rep else mid_rep
        with Store(mid) as b:
            mid_tokens = stored_tokens(b, items)
        rep["mid_backup"]["duplicated"] = sum(1 for k in mid_tokens.values() if k > 1)
        rep["mid_backup"]["unknown_tokens"] = len(set(mid_tokens) - set(ann.attempted) - set(pre_attempted))
        rep["mid_backup"]["annotations_of_load"] = sum(mid_tokens.values())
        with Store(after) as b:
            after_tokens = stored_tokens(b, items)
        rep["load"] = {**integrity(pre_acked + [a["token"] for a in ann.acked], after_tokens,
                                   pre_attempted + ann.attempted),
                       "attempted": len(ann.attempted), "errors": len(ann.errors),
                       "error_examples": ann.errors[:3], "saves_per_s": round(len(ann.acked) / duration, 1),
                       "latency": latency_stats([a["latency_s"] for a in ann.acked]),
                       "handler": latency_stats([a["server_s"] for a in ann.acked])}
        log(f"load: {json.dumps(rep['load'])}")
        # -- phase 2: crash in the middle of the load ---------------------------------------------------------
        ann2 = Annotators(app.url, items, annotators, crash_duration, "crash").start()
        time.sleep(max(0.0, kill_at))
        killed_at = time.time()
        app.kill()
        acked_before_kill = [a["token"] for a in list(ann2.acked) if a["t"] <= killed_at]
        ann2.join(grace=REQUEST_TIMEOUT_S + 10)
        rep["crash"] = {"acked_before_kill": len(acked_before_kill), "attempted": len(ann2.attempted),
                        "errors_after_kill": len(ann2.errors),
                        "latency": latency_stats([a["latency_s"] for a in ann2.acked])}
        rep["restart_s"] = round(app.start(), 1)
        log(f"app restarted after SIGKILL in {rep['restart_s']} s")
        c = _client(app.url)
        pid, rids = items[0]
        token = f"{TOKEN_PREFIX}after-restart-{uuid.uuid4().hex[:10]}"
        out = json.loads(c.submit(pid, json.dumps([rids]), "", token, api_name="/save_ranking").result(timeout=60))
        rep["after_restart_save"] = bool(out.get("annotation_id"))
        rep["stop_rc"] = app.stop()
        from neat_studio.store import SCHEMA_VERSION

        with Store(ws / "studio.duckdb") as st:
            ver = st.schema_version
            final_tokens = stored_tokens(st, items)
            counts = st.counts()
        all_acked = pre_acked + [a["token"] for a in ann.acked] + acked_before_kill + [token]
        rep["final"] = {**integrity(all_acked, final_tokens, pre_attempted + ann.attempted + ann2.attempted + [token]),
                        "schema_version": ver, "schema_ok": ver == SCHEMA_VERSION, "counts": counts}
        rep["latency_all"] = latency_stats([a["latency_s"] for a in ann.acked + ann2.acked])
        log(f"after crash+restart: {json.dumps(rep['final'])}")
    finally:
        app.kill()
    rep["ok"] = bool(
        rep.get("load", {}).get("lost") == 0 and rep["load"].get("duplicated") == 0 and rep["load"]["acknowledged"] > 0
        and rep.get("mid_backup", {}).get("counts_match") and rep["mid_backup"].get("duplicated") == 0
        and rep.get("final", {}).get("lost") == 0 and rep["final"].get("duplicated") == 0
        and rep["final"].get("schema_ok") and rep.get("after_restart_save") and rep["final"].get("unknown_tokens") == 0)
    return rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (phase 1)")
    p.add_argument("--crash-duration", type=float, help="seconds of load in the crash phase (default duration/2)")
    p.add_argument("--kill-at", type=float, help="SIGKILL the app this many seconds into the crash phase")
    p.add_argument("--prompts", type=int, default=30)
    p.add_argument("--workspace", help="workspace folder (default: a new temporary folder)")
    p.add_argument("--no-preview", action="store_true")
    p.add_argument("--no-embed", action="store_true")
    p.add_argument("--pace", type=float, default=10.0,
                   help="first a paced phase: each annotator saves every ~PACE s for --duration s (a fast human; "
                        "the latency target); 0 = skip it")
    p.add_argument("--json", help="write the report here")
    a = p.parse_args(argv)
    if a.annotators < 1 or a.annotators > 200 or a.duration <= 0 or a.duration > 3600:
        p.error("--annotators must be 1..200 and --duration 0..3600 s")
    ws = Path(a.workspace) if a.workspace else Path(tempfile.mkdtemp(prefix="neat-fault-")) / "ws"
    rep = run_scenario(ws, annotators=a.annotators, duration=a.duration, crash_duration=a.crash_duration,
                       kill_at=a.kill_at, n_prompts=a.prompts, preview=not a.no_preview, embed=not a.no_embed,
                       pace=a.pace or None, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = json.dumps(rep, indent=2, default=str)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    if rep.get("paced"):
        pl = rep["paced"]["latency"]
        print(f"\nPACED {a.annotators} annotators, one save every ~{a.pace:g} s each, {a.duration:g} s, preview + "
              f"embedder running: {rep['paced']['acknowledged']} saves, {rep['paced']['errors']} errors; latency "
              f"p50 {pl.get('p50_ms')} ms p95 {pl.get('p95_ms')} ms p99 {pl.get('p99_ms')} ms "
              f"(targets: p95 <= 500 ms, p99 <= 1000 ms); inside the save handler p95 "
              f"{rep['paced']['handler'].get('p95_ms')} ms, outside it (HTTP, queue, threads) p95 "
              f"{rep['paced']['outside_handler'].get('p95_ms')} ms", file=sys.stderr)
    ld, fi = rep.get("load", {}), rep.get("final", {})
    lat = ld.get("latency", {})
    print(f"\nSUMMARY {a.annotators} annotators x {a.duration:g} s (+ crash phase {rep.get('crash_duration_s')} s, "
          f"SIGKILL at {rep.get('kill_at_s')} s): load acknowledged {ld.get('acknowledged')} found {ld.get('found')} "
          f"lost {ld.get('lost')} duplicated {ld.get('duplicated')}; save latency p50 {lat.get('p50_ms')} ms "
          f"p95 {lat.get('p95_ms')} ms p99 {lat.get('p99_ms')} ms; after SIGKILL+restart acknowledged "
          f"{fi.get('acknowledged')} found {fi.get('found')} lost {fi.get('lost')} duplicated {fi.get('duplicated')} "
          f"schema_ok {fi.get('schema_ok')}; ok={rep['ok']}", file=sys.stderr)
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
