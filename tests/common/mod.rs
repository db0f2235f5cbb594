//! Helpers shared by the end-to-end tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with the OpenTelemetry SDK (scripts/test.sh sets it up).
pub fn python() -> PathBuf {
    std::env::var_os("TPSGAP_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

/// Node.js for the JavaScript SDK's exporters (`tests/node`, whose
/// packages `scripts/test.sh` installs).
pub fn node() -> PathBuf {
    std::env::var_os("TPSGAP_TEST_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

pub fn expected(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).expect("expected file");
    serde_json::from_str(&text).expect("expected JSON")
}

/// Comparison with a readable list of differences: types and integers
/// exactly, floats to 1e-12 relative.
pub fn assert_same(got: &Value, want: &Value) {
    fn walk(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    walk(
                        x.get(k).unwrap_or(&Value::String("<missing>".into())),
                        y.get(k).unwrap_or(&Value::String("<missing>".into())),
                        format!("{path}.{k}"),
                        out,
                    );
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    walk(u, v, format!("{path}[{i}]"), out);
                }
            }
            (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                // Hand calculations round the exact decimal; the binary
                // computation may land one unit in the last place away.
                if (x - y).abs() > 1e-12 * x.abs().max(y.abs()) {
                    out.push(format!("{path}: got {x}, want {y}"));
                }
            }
            _ if a != b => out.push(format!("{path}: got {a}, want {b}")),
            _ => {}
        }
    }
    let mut diffs = Vec::new();
    walk(got, want, String::new(), &mut diffs);
    assert!(diffs.is_empty(), "report differs:\n{}", diffs.join("\n"));
}

/// A plain HTTP/1.1 GET: (status, body); status 0 when the connection fails.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, "")
}

/// [`http_get`] with `headers` (lines ending in `\r\n`) in the request.
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut buf = Vec::new();
    let got = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
        )?;
        s.read_to_end(&mut buf)
    });
    if let Err(e) = got {
        return (0, e.to_string());
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The worked example's run object, under another run id.
pub fn example_run(run_id: &str) -> Value {
    let mut want = expected("examples/small.expected.json")["runs"][0].clone();
    want["run_id"] = Value::String(run_id.to_string());
    want
}

/// Waits until the API reports run `id` final and returns its object
/// without `state`.
pub fn final_run(api: SocketAddr, id: &str) -> Value {
    final_run_with(api, id, "")
}

/// [`final_run`], asking with `headers` (a bearer token, say).
pub fn final_run_with(api: SocketAddr, id: &str, headers: &str) -> Value {
    let v = wait_for(Duration::from_secs(30), || {
        let (code, body) = http_get_with(api, &format!("/api/v1/runs/{id}"), headers);
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["state"] == "final").then_some(v)
    })
    .unwrap_or_else(|| panic!("run {id} did not become final"));
    let mut v = v;
    if let Some(o) = v.as_object_mut() {
        o.remove("state");
    }
    v
}

/// A free loopback port, for a program that cannot report the port it
/// chose (Prometheus; tpsgap's own configured addresses).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct free loopback ports: all are held until all are chosen,
/// so no two are the same.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("free port").port())
}

/// A plain HTTP/1.1 POST: (status, lowercase headers, body).
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send head");
    // The server may answer (413) before reading a large body.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let body = buf.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Polls an async check every 100 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for_async<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tpsgap serve` running in this process on loopback port 0.
pub struct TestServer {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tpsgap::serve::ServeError>>,
}

impl TestServer {
    pub async fn start(cfg: tpsgap::serve::ServeConfig) -> TestServer {
        let bind = || async {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind")
        };
        let (g, h, a) = (bind().await, bind().await, bind().await);
        let (grpc, http, api) = (
            g.local_addr().expect("addr"),
            h.local_addr().expect("addr"),
            a.local_addr().expect("addr"),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listeners = tpsgap::serve::Listeners {
            grpc: g,
            http: h,
            api: a,
        };
        let task = tokio::spawn(tpsgap::serve::run(cfg, listeners, async {
            let _ = rx.await;
        }));
        TestServer {
            grpc,
            http,
            api,
            stop: Some(tx),
            task,
        }
    }

    /// Shuts the service down and checks that it stopped cleanly.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let res = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("server stops in time")
            .expect("server task");
        res.expect("server ran cleanly");
    }
}

/// The value of a sample in Prometheus text (`name value` or `name{…} value`).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The worked example's settings: W = S = 5 s, runs final after 1 s idle.
pub fn example_config() -> tpsgap::serve::ServeConfig {
    tpsgap::serve::ServeConfig {
        live: tpsgap::live::LiveConfig {
            window: tpsgap::window::WindowConfig {
                window: 5_000_000_000,
                step: 5_000_000_000,
                ..Default::default()
            },
            idle_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        tick: Duration::from_millis(50),
        ..Default::default()
    }
}

/// `tpsgap serve` as a child process, killed on drop. Its addresses are read
/// from the "tpsgap serving" line it logs once bound, so a server on port 0
/// never races another program for a port.
pub struct ServeProc {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl ServeProc {
    /// `tpsgap serve ARGS` on loopback ports of its own choosing.
    pub fn start<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> ServeProc {
        ServeProc::spawn(
            Command::new(env!("CARGO_BIN_EXE_tpsgap"))
                .arg("serve")
                .args(args)
                .args(["--grpc-listen", "127.0.0.1:0"])
                .args(["--http-listen", "127.0.0.1:0"])
                .args(["--api-listen", "127.0.0.1:0"]),
        )
    }

    /// Runs `cmd` (a `tpsgap serve`) and waits until its `/healthz` answers.
    pub fn spawn(cmd: &mut Command) -> ServeProc {
        ServeProc::try_spawn(cmd).unwrap_or_else(|log| panic!("tpsgap serve did not start:\n{log}"))
    }

    /// As [`ServeProc::spawn`], but a server that does not start gives its
    /// log (a port taken between choosing it and binding it, say).
    pub fn try_spawn(cmd: &mut Command) -> Result<ServeProc, String> {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tpsgap serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("tpsgap serving") {
                    let _ = tx.send(line.clone());
                }
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut proc = ServeProc {
            child,
            grpc: ([0, 0, 0, 0], 0).into(),
            http: ([0, 0, 0, 0], 0).into(),
            api: ([0, 0, 0, 0], 0).into(),
            log,
        };
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            // Stopped (if it still runs), its log is whole once the reader
            // thread has read to the end of its stderr.
            let _ = proc.child.kill();
            let _ = proc.child.wait();
            let _ = reader.join();
            return Err(proc.log());
        };
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        };
        (proc.grpc, proc.http, proc.api) = (addr("grpc"), addr("http"), addr("api"));
        let api = proc.api;
        let up = wait_for(Duration::from_secs(20), || {
            (http_get(api, "/healthz").0 == 200).then_some(())
        });
        assert!(up.is_some(), "no /healthz on {api}:\n{}", proc.log());
        Ok(proc)
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }
}

/// A child process (Prometheus, a collector, a page server) killed and
/// reaped when dropped, so that a failed check leaves nothing running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
