//! Helpers for the integration tests: locating the built binaries, running
//! them as child processes, free loopback ports, polling.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; run the tests with `cargo test --workspace` so that every binary is built",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A fresh scratch directory.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vigil-test-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ u128::from(free_port())
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A child process killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], log: &std::path::Path) -> Proc {
        Self::spawn_env(name, args, &[], log)
    }

    /// Like [`Proc::spawn`], with extra environment variables.
    pub fn spawn_env(
        name: &str,
        args: &[&str],
        env: &[(String, String)],
        log: &std::path::Path,
    ) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin(name))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("VIGIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP or SIGCONT etc.
    #[allow(unsafe_code)]
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with integer arguments.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A controller process on free ports with a SQLite store in `dir`.
#[derive(Debug)]
pub struct Controller {
    pub proc: Proc,
    pub grpc: u16,
    pub http: u16,
    pub store: String,
    pub dir: PathBuf,
    pub extra: Vec<String>,
    /// Extra environment of the controller process.
    pub env: Vec<(String, String)>,
}

impl Controller {
    pub fn start(dir: &std::path::Path, heartbeat_ms: u32) -> Controller {
        Self::start_with(dir, heartbeat_ms, &[])
    }

    /// Like [`Controller::start`], with extra flags.
    pub fn start_with(dir: &std::path::Path, heartbeat_ms: u32, flags: &[&str]) -> Controller {
        let (grpc, http) = (free_port(), free_port());
        let store = format!("sqlite://{}", dir.join("vigil.db").display());
        let mut extra = vec!["--heartbeat-ms".to_owned(), heartbeat_ms.to_string()];
        extra.extend(flags.iter().map(|f| (*f).to_owned()));
        Self::start_env(dir, grpc, http, store, extra, Vec::new())
    }

    /// A controller with extra flags and environment variables.
    pub fn start_env(
        dir: &std::path::Path,
        grpc: u16,
        http: u16,
        store: String,
        extra: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Controller {
        let proc = Self::spawn(dir, grpc, http, &store, &extra, &env);
        let c = Controller {
            proc,
            grpc,
            http,
            store,
            dir: dir.to_owned(),
            extra,
            env,
        };
        c.wait_ready();
        c
    }

    fn spawn(
        dir: &std::path::Path,
        grpc: u16,
        http: u16,
        store: &str,
        extra: &[String],
        env: &[(String, String)],
    ) -> Proc {
        let g = format!("127.0.0.1:{grpc}");
        let h = format!("127.0.0.1:{http}");
        let mut args = vec!["--grpc-listen", &g, "--http-listen", &h, "--store", store];
        args.extend(extra.iter().map(String::as_str));
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        Proc::spawn_env(
            "vigil-controller",
            &args,
            env,
            &dir.join(format!("controller-{n}.log")),
        )
    }

    /// Starts the controller again on the same ports and store.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Self::spawn(
            &self.dir,
            self.grpc,
            self.http,
            &self.store,
            &self.extra,
            &self.env,
        );
        self.wait_ready();
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn wait_ready(&self) {
        let url = format!("{}/readyz", self.http_url());
        wait_until(Duration::from_secs(30), "controller ready", || {
            blocking_get(&url).is_some()
        });
    }

    /// GET a JSON document from the controller's API.
    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
        let body = blocking_get(&format!("{}{path}", self.http_url()))?;
        serde_json::from_str(&body).ok()
    }

    /// The node's JSON document, if known.
    pub fn node(&self, id: &str) -> Option<serde_json::Value> {
        self.get(&format!("/api/v1/nodes/{id}"))
    }
}

/// Starts an agent process.
pub fn agent(
    controller: &Controller,
    node: &str,
    cards: &str,
    progress_port: u16,
    extra: &[&str],
) -> Proc {
    let url = controller.grpc_url();
    let listen = format!("127.0.0.1:{progress_port}");
    let mut args = vec![
        "--controller",
        &url,
        "--node-id",
        node,
        "--cards",
        cards,
        "--progress-listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    Proc::spawn(
        "vigil-agent",
        &args,
        &controller.dir.join(format!("agent-{node}.log")),
    )
}

/// A plain HTTP GET with a short timeout; the body on 2xx.
pub fn blocking_get(url: &str) -> Option<String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let r = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.text().await.ok()
        })
    })
    .join()
    .ok()
    .flatten()
}

/// Polls `f` every 20 ms until it is true; panics after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A plain HTTP POST with a short timeout; the status code, 0 if unreachable.
pub fn blocking_post(url: &str, body: &str) -> u16 {
    let (url, body) = (url.to_owned(), body.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(&url)
                .body(body)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            Some(r.status().as_u16())
        })
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// An external program the test needs, found on `PATH` under any of
/// `names`. When it is missing, the test prints `SKIPPED: <name> not
/// installed` and gets `None`, so it can pass without it; but with `CI`
/// set in the environment a missing program fails the test.
pub fn tool(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let name = names.first().copied().unwrap_or("tool");
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{name} not installed, and CI is set: install it (see .ci/run)");
    }
    println!("SKIPPED: {name} not installed");
    None
}

/// `target/test-artifacts/`, created: screenshots and other files a test
/// leaves for people to look at.
pub fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target
    let target = exe
        .ancestors()
        .nth(3)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

impl Proc {
    /// Starts any program (not a workspace binary), output to `log`.
    pub fn spawn_program(program: &std::path::Path, args: &[&str], log: &std::path::Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            child,
            name: program.display().to_string(),
        }
    }
}
