"""The console in a real headless Chromium against a real two-node cluster.

Run by scripts/console-test.sh, which starts a private PostgreSQL and passes:
  REGENT_BIN           the regent binary
  REGENT_DATABASE_URL  the database
  REGENT_SCREENSHOTS   where to write a screenshot of each view
The nodes, tokens, packages and runs are made here; steps are carried by this test over the
HTTP API (claim, complete, fail), so it decides when each step changes state and checks that
the page follows without a reload.
"""

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

BIN = os.environ["REGENT_BIN"]
DB = os.environ["REGENT_DATABASE_URL"]
SHOTS = os.environ.get("REGENT_SCREENSHOTS", ".build/console-screenshots")
WAIT = 15.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cli(*args):
    out = subprocess.run([BIN, *args, "--database-url", DB], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"regent {' '.join(args)} failed: {out.stdout}{out.stderr}")
    return out.stdout


class Node:
    def __init__(self, name, log_dir):
        self.name = name
        self.port = free_port()
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--database-url", DB, "--node-name", self.name, "--http-address", f"127.0.0.1:{self.port}",
             "--log-level", "debug"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.2)
        raise AssertionError(f"node {self.name} did not become ready")

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


def call(base, token, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, json.loads(text) if text else None


def manifest_dir(root, type_, description, steps):
    d = tempfile.mkdtemp(dir=root)
    with open(os.path.join(d, "workflow.json"), "w") as f:
        json.dump({"workflow_type": type_, "description": description, "steps": steps}, f)
    return d


class ConsoleInABrowser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(SHOTS, exist_ok=True)
        cls.tmp = tempfile.mkdtemp(prefix="regent-console-")
        cls.nodes = [Node("n1", cls.tmp), Node("n2", cls.tmp)]
        cls.nodes[0].start()
        time.sleep(0.5)  # n1 leads: it booted first
        cls.nodes[1].start()
        cls.admin = cli("tokens", "create", "--role", "admin", "--name", "console-admin").strip().splitlines()[-1]
        cls.worker = cli("tokens", "create", "--role", "worker", "--name", "console-worker").strip().splitlines()[-1]
        cls.read = cli("tokens", "create", "--role", "read", "--name", "console-read").strip().splitlines()[-1]
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
        cli("packages", "deploy", os.path.join(root, "examples", "shipping-dispatch"))
        cli("packages", "deploy", os.path.join(root, "examples", "approval"))
        steps = [{"name": "charge", "lane": "console", "max_attempts": 1}, {"name": "receipt", "lane": "console"}]
        cls.v1 = cli("packages", "deploy", manifest_dir(cls.tmp, "console.flaky", "first", steps)).splitlines()[0].strip()
        cls.v2 = cli("packages", "deploy", manifest_dir(cls.tmp, "console.flaky", "second", steps)).splitlines()[0].strip()
        cls.instance = "console-test-worker"
        status, _ = call(cls.nodes[1].url, cls.worker, "POST", "/v1/workers/register", {
            "namespace": "runs", "worker_instance_id": cls.instance, "worker_id": "console-test",
            "lanes": ["pricing", "mail", "warehouse", "console"], "liveness_ttl_ms": 600000})
        assert status in (200, 201), status

        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("REGENT_CHROMIUM", "/usr/bin/chromium")
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900", "--disable-gpu"]:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        cls.browser = webdriver.Chrome(service=Service(os.environ.get("REGENT_CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)
        cls.browser.set_page_load_timeout(30)
        cls.allowed_console_errors = []

    @classmethod
    def tearDownClass(cls):
        try:
            cls.browser.quit()
        finally:
            for n in cls.nodes:
                n.kill(signal.SIGTERM)

    # ── helpers ────────────────────────────────────────────────────────────────────────
    def until(self, what, check, timeout=WAIT):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                value = check()
                if value:
                    return value
            except Exception as e:  # the page is redrawing
                last = e
            time.sleep(0.1)
        self.browser.save_screenshot(os.path.join(SHOTS, f"failed-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:60]}.png"))
        self.fail(f"timed out waiting for {what} (last error: {last})")

    def css(self, selector):
        return self.browser.find_element(By.CSS_SELECTOR, selector)

    def present(self, selector):
        return self.browser.find_elements(By.CSS_SELECTOR, selector)

    def sign_in(self, node, token):
        self.browser.get(node.url + "/console/")
        if self.present("#signout") and self.css("#signout").is_displayed():
            self.css("#signout").click()
        box = self.until("the sign-in form", lambda: self.present("#token") and self.css("#token"))
        box.send_keys(token)
        self.css("#login").click()
        self.until("the signed-in header", lambda: self.css("#who").text.strip())

    def go(self, hash_):
        self.browser.execute_script("location.hash = arguments[0]", hash_)

    def confirm(self):
        self.until("the confirmation", lambda: self.css("#confirm").is_displayed())
        self.css("#confirm-yes").click()

    def step_state(self, name):
        return self.css(f'#dag g.node[data-step="{name}"]').get_attribute("data-state")

    def claim(self, lanes, node=None):
        node = node or self.nodes[1]
        for _ in range(100):
            status, doc = call(node.url, self.worker, "POST", "/v1/leases/claim",
                               {"namespace": "runs", "worker_instance_id": self.instance, "lanes": lanes, "wait_ms": 1000})
            self.assertEqual(status, 200, doc)
            if doc["leases"]:
                return doc["leases"][0]
        self.fail(f"nothing to claim in {lanes}")

    def complete(self, lease, output=None):
        status, doc = call(self.nodes[1].url, self.worker, "POST", "/v1/leases/complete", {
            "execution_id": lease["execution_id"], "lease_epoch": lease["lease_epoch"],
            "worker_instance_id": self.instance, "output": output or {"ok": True}})
        self.assertEqual(status, 200, doc)

    def start_run(self, type_, key):
        status, doc = call(self.nodes[1].url, self.worker, "POST", "/v1/runs", {"workflow_type": type_, "input": {"order_id": 7}, "idempotency_key": key})
        self.assertIn(status, (200, 201), doc)
        return doc["run_id"]

    def shot(self, name):
        self.browser.save_screenshot(os.path.join(SHOTS, f"{name}.png"))

    # ── the scenarios, in order ────────────────────────────────────────────────────────
    def test_01_loads_clean_with_a_strict_policy_and_keeps_the_token_out_of_urls(self):
        with urllib.request.urlopen(self.nodes[0].url + "/console/") as r:
            csp = r.headers["Content-Security-Policy"]
            self.assertIn("script-src 'self'", csp)
            self.assertIn("default-src 'none'", csp)
            self.assertIn("frame-ancestors 'none'", csp)
            self.assertNotIn("unsafe-inline", csp)
            self.assertEqual(r.headers["X-Content-Type-Options"], "nosniff")
        self.sign_in(self.nodes[0], self.admin)
        self.assertEqual(self.css("#who").get_attribute("data-role"), "admin")
        self.assertNotIn(self.admin, self.browser.current_url)
        self.assertNotIn("rgt_", self.browser.current_url)
        stored = self.browser.execute_script("return sessionStorage.getItem('regent.console.token')")
        self.assertEqual(stored, self.admin)
        self.assertEqual(self.browser.execute_script("return document.cookie"), "")
        self.until("the live stream", lambda: self.css("#conn").get_attribute("data-state") == "live")
        self.shot("runs")

    def test_02_the_leader_shown_is_the_real_one(self):
        self.go("#/cluster")
        _, leader = call(self.nodes[0].url, self.read, "GET", "/v1/leader")
        self.until("the leader's name", lambda: self.css("#leader-node").text == leader["leader"]["node_name"])
        self.assertEqual(self.css("#leader-term").text, str(leader["term"]))
        rows = self.present("tr[data-instance]")
        self.assertEqual(len(rows), 2)
        self.assertTrue(self.present("tr.me"), "the node the console talks to is marked")
        self.assertTrue(self.present("tr[data-term]"), "the elections table has a row")
        self.shot("cluster")
        # Live without polling: the page reads the cluster once, then follows the stream's snapshots.
        count = "return performance.getEntriesByType('resource').filter(e => /\\/v1\\/(cluster|queues)/.test(e.name)).length"
        before = self.browser.execute_script(count)
        first_age = self.css("tr[data-instance] td.age").text
        time.sleep(5)
        self.assertEqual(self.browser.execute_script(count), before, "the cluster view polled the API")
        self.assertNotEqual(self.css("tr[data-instance] td.age").text, first_age, "heartbeat ages tick")

    def test_03_a_runs_graph_follows_the_worker_and_an_approval_from_the_page_lets_it_go_on(self):
        run = self.start_run("orders.approval", "console-approval-1")
        self.go(f"#/run/{run}")
        self.until("the graph with quote queued", lambda: self.step_state("quote") in ("queued", "running"))
        self.assertEqual(self.step_state("approve"), "pending")
        lease = self.claim(["pricing"])
        self.assertEqual(lease["run_id"], run)
        self.until("quote running", lambda: self.step_state("quote") == "running", timeout=8)
        self.complete(lease, {"quote": 42})
        self.until("quote succeeded and approve waiting", lambda: self.step_state("quote") == "succeeded" and self.step_state("approve") == "waiting")
        self.shot("run-waiting-for-approval")
        button = self.until("the approve button", lambda: self.present("#approve-approve") and self.css("#approve-approve"))
        button.click()
        self.confirm()
        self.until("approve succeeded", lambda: self.step_state("approve") == "succeeded")
        _, doc = call(self.nodes[0].url, self.read, "GET", f"/v1/runs/{run}")
        approve = [s for s in doc["steps"] if s["name"] == "approve"][0]
        self.assertEqual(approve["state"], "succeeded")
        self.assertEqual(approve["output"]["approved"], True)
        self.assertEqual(approve["output"]["by"], "console-admin")
        # The timer, then the child run's two steps, then notify: the page follows to the end.
        self.until("the child run started", lambda: self.step_state("ship") == "waiting", timeout=20)
        for _ in range(2):
            self.complete(self.claim(["warehouse"]))
        self.complete(self.claim(["mail"]))
        self.until("the run succeeded", lambda: self.css("h1 .badge").text == "succeeded", timeout=20)
        self.assertEqual(self.step_state("notify"), "succeeded")
        self.assertTrue(self.present("#run-events li[data-topic='run.succeeded']"), "the run's events are listed live")
        self.shot("run-succeeded")

    def test_04_a_failed_run_retried_from_the_page_succeeds(self):
        run = self.start_run("console.flaky", "console-flaky-1")
        lease = self.claim(["console"])
        status, doc = call(self.nodes[1].url, self.worker, "POST", "/v1/leases/fail", {
            "execution_id": lease["execution_id"], "lease_epoch": lease["lease_epoch"], "worker_instance_id": self.instance,
            "error": "card declined <img src=x onerror=window.pwned=1>", "retryable": False})
        self.assertEqual(status, 200, doc)
        self.go(f"#/run/{run}")
        self.until("the failed run", lambda: self.css("h1 .badge").text == "failed")
        # Markup in an error is shown as text, never parsed: no element, no script ran.
        self.assertIn("card declined <img src=x onerror=window.pwned=1>", self.css("#view").text)
        self.assertFalse(self.present("#view img[src='x']"))
        self.assertIsNone(self.browser.execute_script("return window.pwned"))
        attempt = self.css("tr[data-attempt^='charge/']")
        self.assertIn("console-test-worker", attempt.text)
        self.assertIn("failed", attempt.text)
        self.shot("run-failed")
        self.css("#run-retry").click()
        self.confirm()
        self.until("the run running again", lambda: self.css("h1 .badge").text == "running")
        self.complete(self.claim(["console"]))
        self.complete(self.claim(["console"]))
        self.until("the retried run succeeded", lambda: self.css("h1 .badge").text == "succeeded")
        self.assertEqual(self.step_state("receipt"), "succeeded")

    def test_05_a_rollback_from_the_packages_page_moves_the_route(self):
        self.go("#/packages")
        row = self.until("the first version's row", lambda: self.css(f'tr[data-hash="{self.v1}"]'))
        self.assertEqual(row.get_attribute("data-routed"), "false")
        self.shot("packages")
        row.find_element(By.CSS_SELECTOR, "button[data-action='route']").click()
        self.confirm()
        self.until("v1 routed on the page", lambda: self.css(f'tr[data-hash="{self.v1}"]').get_attribute("data-routed") == "true")
        _, page = call(self.nodes[0].url, self.read, "GET", "/v1/packages?type=console.flaky")
        routed = [p["content_hash"] for p in page["packages"] if p["routed"]]
        self.assertEqual(routed, [self.v1])
        # Unloading the routed version is refused, and the refusal is shown.
        self.css(f'tr[data-hash="{self.v1}"] button[data-action="unload"]').click()
        self.confirm()
        self.until("the refusal", lambda: "routed version" in self.css("#banner").text)
        self.allowed_console_errors.append("409")
        self.go(f"#/package/{self.v1}")
        self.until("the manifest graph", lambda: self.present('#dag g.node[data-step="receipt"]'))

    def test_06_an_event_published_with_the_cli_appears_in_the_tail(self):
        self.go("#/events")
        self.css("#topic-filter").send_keys("app.*")
        cli("events", "publish", "--topic", "app.console.hello", "--data", '{"greeting": "from the CLI"}')
        self.until("the event in the tail", lambda: self.present("#event-tail li[data-topic='app.console.hello']"))
        self.assertIn("from the CLI", self.css("#event-tail li[data-topic='app.console.hello']").text)
        self.shot("events")

    def test_07_the_other_views_draw(self):
        for view, selector in [("#/workers", f"tr[data-worker='{self.instance}']"), ("#/queues", "#view-queues"),
                               ("#/modules", "tr[data-module='workflow']"), ("#/audit", "tr[data-action]")]:
            self.go(view)
            self.until(f"{view} drawn", lambda: self.present(selector))
            self.shot(view.strip("#/"))

    def test_07b_a_phone_width_and_a_dark_system_theme(self):
        self.go("#/runs")
        self.until("the runs", lambda: self.present("tr[data-run]"))
        self.browser.set_window_size(390, 844)
        try:
            time.sleep(0.3)
            overflow = self.browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            self.assertLessEqual(overflow, 1, "the page scrolls sideways at a phone's width (tables scroll inside their frame)")
            self.shot("runs-narrow")
        finally:
            self.browser.set_window_size(1280, 900)
        self.browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        try:
            self.go("#/cluster")
            self.until("the cluster", lambda: self.present("tr[data-instance]"))
            bg = self.browser.execute_script("return getComputedStyle(document.body).backgroundColor")
            channels = [int(x) for x in re.findall(r"\d+", bg)[:3]]
            self.assertLess(sum(channels) / 3, 60, f"the dark theme's background is {bg}")
            self.shot("cluster-dark")
        finally:
            self.browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})

    def test_08_a_read_token_sees_no_admin_or_worker_buttons(self):
        self.sign_in(self.nodes[0], self.read)
        self.assertEqual(self.css("#who").get_attribute("data-role"), "read")
        self.go("#/cluster")
        self.until("the cluster", lambda: self.present("tr[data-instance]"))
        self.assertFalse(self.present("#resign"))
        self.go("#/packages")
        self.until("the packages", lambda: self.present("tr[data-hash]"))
        self.assertFalse(self.present("button[data-action]"))
        run = self.start_run("console.flaky", "console-flaky-read")
        self.go(f"#/run/{run}")
        self.until("the run", lambda: self.present("#dag"))
        self.assertFalse(self.present("#run-actions button"))

    def test_09_a_failover_is_shown_live_and_an_admin_resign_works_after_confirmation(self):
        # Watch from n2 while n1 (the leader) is killed: the new leader and its election row
        # appear without a reload.
        self.sign_in(self.nodes[1], self.admin)
        self.go("#/cluster")
        _, before = call(self.nodes[1].url, self.read, "GET", "/v1/leader")
        self.until("the leader", lambda: self.css("#leader-node").text == before["leader"]["node_name"])
        old_term = before["term"]
        leader = [n for n in self.nodes if n.name == before["leader"]["node_name"]][0]
        other = [n for n in self.nodes if n is not leader][0]
        if leader is not self.nodes[0]:
            self.skipTest("n1 was expected to lead")
        leader.kill(signal.SIGKILL)
        t0 = time.time()
        while True:
            code, now = call(other.url, self.read, "GET", "/v1/leader")
            if code != 200:
                print("leader read answered", code, now)
            elif now.get("leader") and now["leader"]["node_name"] == other.name:
                break
            time.sleep(0.02)
        print(f"the database named the new leader {time.time() - t0:.2f} s after the SIGKILL")
        self.until("the new leader on the page", lambda: self.css("#leader-node").text == other.name, timeout=10)
        self.until("the new election row", lambda: self.present(f"tr[data-term='{old_term + 1}']"), timeout=10)
        shown_after = time.time() - t0
        print(f"console showed the new leader {shown_after:.2f} s after the SIGKILL")
        self.assertIn("crash", self.css(f"tr[data-term='{old_term + 1}']").text)
        self.shot("cluster-after-failover")
        # The killed node comes back as a follower; an admin's resign on n2 (after confirming)
        # hands leadership to it.
        leader.start()
        self.until("two instances", lambda: len([r for r in self.present("tr[data-instance]") if "alive" in r.text]) >= 2, timeout=20)
        self.css("#resign").click()
        self.confirm()
        self.until("leadership handed to n1", lambda: self.css("#leader-node").text == leader.name, timeout=15)
        self.until("the resignation row", lambda: "resigned" in self.css(f"tr[data-term='{old_term + 1}']").text, timeout=10)
        # The node the console talks to goes away: it says so, and names the other node.
        other.kill(signal.SIGKILL)
        self.until("disconnected", lambda: self.css("#conn").get_attribute("data-state") == "down", timeout=20)
        links = [a.get_attribute("href") for a in self.present("#banner a")]
        self.assertTrue(any(leader.url in (h or "") for h in links), links)
        self.shot("disconnected")
        other.start()
        self.until("reconnected", lambda: self.css("#conn").get_attribute("data-state") == "live", timeout=30)

    def test_09b_the_actions_taken_from_the_page_are_audited(self):
        node = [n for n in self.nodes if n.proc and n.proc.poll() is None][0]
        _, page = call(node.url, self.read, "GET", "/v1/audit?before=9223372036854775807&limit=1000")
        actions = {(a["action"], a["actor"]) for a in page["items"]}
        for action in ["run.signalled", "run.retried", "package.routed", "leader.resigned"]:
            self.assertTrue(any(a == action for a, _ in actions), f"{action} is not in the audit log")
        self.assertIn(("run.signalled", "token:console-admin"), actions)
        self.assertIn(("package.routed", "token:console-admin"), actions)

    def test_10_no_console_errors_and_no_token_in_server_logs(self):
        entries = [e for e in self.browser.get_log("browser") if e["level"] == "SEVERE"]
        unexpected = []
        for e in entries:
            msg = e["message"]
            # Refusals the scenarios asked for, and requests to a node the test had killed.
            if any(code in msg for code in self.allowed_console_errors) or "ERR_CONNECTION_REFUSED" in msg or "ERR_EMPTY_RESPONSE" in msg \
                    or "Failed to fetch" in msg or "network error" in msg.lower() or "ERR_INCOMPLETE_CHUNKED_ENCODING" in msg:
                continue
            unexpected.append(msg)
        self.assertEqual(unexpected, [], "console errors")
        for n in self.nodes:
            with open(n.log_path) as f:
                text = f.read()
            for token in (self.admin, self.worker, self.read):
                secret = token.split("_")[-1]
                self.assertNotIn(secret, text, f"a token's secret is in {n.name}'s log")


if __name__ == "__main__":
    unittest.main(verbosity=2)
