#![forbid(unsafe_code)]
//! Shared harness for the end-to-end tests in `e2e/tests/`.
//!
//! The tests start the REAL `k_server` and `k_proxy` binaries (built by
//! `cargo build --bins`) and drive them with `curl`, `openssl` and the runbook
//! script, exactly as an operator would. Everything here is plain `std` plus
//! `tempfile` and `serde_json`.
//!
//! * Binaries are taken from `$CHROMECARD_BIN_DIR`, else `<workspace>/target/debug`.
//! * Every spawned process gets its own temp dir holding its stdout/stderr logs and an
//!   isolated `XDG_STATE_HOME`; when a test panics the logs are printed (libtest shows
//!   them with the failure) and the process is SIGKILLed on drop.
//! * Tests that use the runbook's fixed ports take [`fixed_ports_lock`].

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};
pub use tempfile::TempDir;

/// How long a started binary may take to accept TCP connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The proxy token of the runbook.
pub const PROXY_TOKEN: &str = "dev-proxy-token";

/// Environment variables that would make curl (or a binary) go through an HTTP proxy.
const PROXY_ENV: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

// ---------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------

/// The workspace root (the parent of this crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate has a parent dir")
        .to_path_buf()
}

/// `$CHROMECARD_BIN_DIR` if set, else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("CHROMECARD_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("target").join("debug"),
    }
}

/// Path of a project binary; panics with instructions if it was not built.
pub fn bin_path(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    if !p.is_file() {
        panic!(
            "binary `{}` not found at {}: run `cargo build --bins` first \
             (or set CHROMECARD_BIN_DIR to the directory holding k_server and k_proxy)",
            name,
            p.display()
        );
    }
    refuse_stale(&p);
    p
}

/// Panics when a source file the binary was built from changed after it was built:
/// `cargo test -p chromecard-e2e` does not rebuild the binaries it starts, and a stale
/// one would test old code. Cargo's dep-info file beside the binary (`k_proxy.d`) lists
/// those sources; without one there is nothing to compare. Checked once per binary.
fn refuse_stale(bin: &Path) {
    static CHECKED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !checked
        .get_or_insert_with(HashSet::new)
        .insert(bin.to_path_buf())
    {
        return;
    }
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let (Some(built), Ok(dep_info)) = (modified(bin), fs::read_to_string(bin.with_extension("d")))
    else {
        return;
    };
    let first_rule = dep_info.lines().next().unwrap_or("");
    let sources = first_rule.split_once(": ").map_or("", |(_, deps)| deps);
    if let Some(newer) = dep_info_paths(sources)
        .into_iter()
        .find(|source| modified(source).is_some_and(|at| at > built))
    {
        panic!(
            "{} is older than {}, a source it is built from: run `cargo build --workspace \
             --bins` first (scripts/test.sh does), or the tests run old code",
            bin.display(),
            newer.display()
        );
    }
}

/// The paths of a make-style dependency list: separated by spaces, a space inside a path
/// escaped as `\ `.
fn dep_info_paths(list: &str) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                current.push(' ');
                chars.next();
            }
            ' ' => {
                if !current.is_empty() {
                    paths.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        paths.push(PathBuf::from(current));
    }
    paths
}

/// A file under the workspace root that the tests need (a script); panics if missing.
pub fn workspace_file(rel: &str) -> PathBuf {
    let p = workspace_root().join(rel);
    if !p.is_file() {
        panic!(
            "required file {} is missing from the workspace",
            p.display()
        );
    }
    p
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static FIXED_PORTS: Mutex<()> = Mutex::new(());

/// A currently free TCP port on 127.0.0.1 (bind to port 0, then drop). Never hands
/// out the same port twice within one test process.
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        drop(l);
        if set.insert(port) {
            return port;
        }
    }
    panic!("could not find a fresh free port");
}

/// True if nothing is listening on 127.0.0.1:`port` and we may bind it.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// True if a TCP connection to 127.0.0.1:`port` is accepted.
pub fn port_accepts(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok()
}

/// Serializes the tests that use the runbook's fixed ports (8770, 8771, 8780, 9780).
/// Keep all such tests in ONE test file (one process) and hold this guard for the
/// whole test.
pub fn fixed_ports_lock() -> MutexGuard<'static, ()> {
    FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Panics with a clear message if one of the fixed ports is taken by something else.
pub fn require_ports_free(ports: &[u16]) {
    for &p in ports {
        // Another test run on this machine may hold them for a while: wait up to 60 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_is_free(p) {
            if Instant::now() > deadline {
                panic!("port 127.0.0.1:{p} is in use by another process; the runbook tests need it free");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A certificate set written by `tls/make-certs.sh --out <tempdir>`.
pub struct Certs {
    dir: TempDir,
}

impl Certs {
    /// Runs `<root>/tls/make-certs.sh --out <new tempdir>`. A second call gives an
    /// unrelated ("foreign") CA.
    pub fn generate() -> Certs {
        let script = workspace_file("tls/make-certs.sh");
        let dir = tempfile::Builder::new()
            .prefix("chromecard-certs-")
            .tempdir()
            .expect("tempdir");
        let ran = run(
            Command::new(&script).arg("--out").arg(dir.path()),
            None,
            Duration::from_secs(60),
        );
        if !ran.success() {
            panic!(
                "{} --out {} failed: {}\nstdout:\n{}\nstderr:\n{}",
                script.display(),
                dir.path().display(),
                ran.describe_status(),
                ran.stdout,
                ran.stderr
            );
        }
        let certs = Certs { dir };
        for f in [
            "ca.crt",
            "k_server.crt",
            "k_server.key",
            "k_proxy.crt",
            "k_proxy.key",
        ] {
            assert!(
                certs.path(f).is_file(),
                "make-certs.sh did not write {}",
                certs.path(f).display()
            );
        }
        certs
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }
    pub fn server_crt(&self) -> PathBuf {
        self.path("k_server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.path("k_server.key")
    }
    pub fn proxy_crt(&self) -> PathBuf {
        self.path("k_proxy.crt")
    }
    pub fn proxy_key(&self) -> PathBuf {
        self.path("k_proxy.key")
    }
}

/// `p` as a `String` for argument lists.
pub fn s(p: impl AsRef<Path>) -> String {
    p.as_ref().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Builder for a process under test.
pub struct Spawn {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    state_home: Option<PathBuf>,
}

impl Spawn {
    pub fn k_server() -> Spawn {
        Spawn::program("k_server", bin_path("k_server"))
    }
    pub fn k_proxy() -> Spawn {
        Spawn::program("k_proxy", bin_path("k_proxy"))
    }
    /// Any program (e.g. socat), found through PATH if `program` has no slash.
    pub fn program(name: &str, program: impl Into<PathBuf>) -> Spawn {
        Spawn {
            name: name.to_string(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            state_home: None,
        }
    }
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Spawn {
        self.args.push(a.as_ref().to_os_string());
        self
    }
    pub fn args<I, S>(mut self, it: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(it.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Spawn {
        self.envs
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }
    /// Use this `XDG_STATE_HOME` instead of a fresh one (to restart on the same data).
    pub fn state_home(mut self, p: &Path) -> Spawn {
        self.state_home = Some(p.to_path_buf());
        self
    }

    /// Spawns without waiting for anything.
    pub fn spawn(self) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix(&format!("chromecard-{}-", self.name))
            .tempdir()
            .expect("tempdir");
        let state_home = self
            .state_home
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        fs::create_dir_all(&state_home).expect("create state home");
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let stdout = fs::File::create(&stdout_path).expect("stdout log");
        let stderr = fs::File::create(&stderr_path).expect("stderr log");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env_remove("CHROMECARD_PROXY_TOKEN")
            .env("XDG_STATE_HOME", &state_home)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("data"));
        for v in PROXY_ENV {
            cmd.env_remove(v);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "cannot start {} ({}): not found; install it (CI installs it) or build the binaries",
                self.name,
                self.program.display()
            ),
            Err(e) => panic!("cannot start {} ({}): {e}", self.name, self.program.display()),
        };
        let cmdline = format!(
            "{} {}",
            self.program.display(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        Proc {
            name: self.name,
            cmdline,
            child,
            exited: None,
            dir,
            state_home,
            stdout_path,
            stderr_path,
        }
    }

    /// Spawns and waits until 127.0.0.1:`port` accepts TCP connections.
    pub fn start(self, port: u16) -> Proc {
        let mut p = self.spawn();
        p.wait_listening(port);
        p
    }

    /// Spawns and waits (at most `timeout`) for the process to exit on its own; kills it
    /// if it does not. For "refuses to start" tests.
    pub fn run_to_exit(self, timeout: Duration) -> Exited {
        let mut p = self.spawn();
        let start = Instant::now();
        let status = loop {
            match p.child.try_wait() {
                Ok(Some(st)) => {
                    p.exited = Some(st);
                    break Some(st);
                }
                Ok(None) if start.elapsed() > timeout => break None,
                Ok(None) => thread::sleep(Duration::from_millis(25)),
                Err(e) => panic!("wait on {}: {e}", p.name),
            }
        };
        let elapsed = start.elapsed();
        p.kill();
        Exited {
            cmdline: p.cmdline.clone(),
            status,
            elapsed,
            stdout: p.stdout(),
            stderr: p.stderr(),
        }
    }
}

/// Result of [`Spawn::run_to_exit`].
#[derive(Debug)]
pub struct Exited {
    pub cmdline: String,
    /// `None` if the process was still running at the deadline (it was killed).
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Exited {
    /// Asserts a non-zero exit before the deadline, and that stderr mentions every
    /// string of `must_mention`.
    pub fn assert_refused(&self, must_mention: &[&str]) {
        let ctx = || {
            format!(
                "\ncommand: {}\nstatus: {:?} after {:?}\nstdout:\n{}\nstderr:\n{}",
                self.cmdline, self.status, self.elapsed, self.stdout, self.stderr
            )
        };
        match self.status {
            None => panic!(
                "expected the process to refuse to start, but it kept running{}",
                ctx()
            ),
            Some(st) if st.success() => {
                panic!("expected a non-zero exit status, got success{}", ctx())
            }
            Some(st) if st.code().is_none() => {
                panic!(
                    "expected a clean non-zero exit, but it was killed by a signal ({st}){}",
                    ctx()
                )
            }
            Some(_) => {}
        }
        for m in must_mention {
            assert!(
                self.stderr.contains(m),
                "stderr should mention `{m}`{}",
                ctx()
            );
        }
    }
}

/// A running process under test; SIGKILLed (and reaped) on drop. If the current
/// thread is panicking, its logs are printed first.
pub struct Proc {
    pub name: String,
    pub cmdline: String,
    child: Child,
    exited: Option<ExitStatus>,
    dir: TempDir,
    state_home: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// The `XDG_STATE_HOME` given to this process.
    pub fn state_home(&self) -> &Path {
        &self.state_home
    }
    /// This process's private temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
    pub fn logs(&self) -> String {
        let stderr = self.stderr();
        let note = if stderr.contains("received SIGTERM") || stderr.contains("received Ctrl-C") {
            "\nNOTE: this process received SIGTERM/SIGINT, which the harness never sends (it only \
             SIGKILLs on drop): something else on this machine signalled it (a `pkill`/`killall` \
             by name, or a recycled PID). The failure may not be the binary's fault; rerun."
        } else {
            ""
        };
        format!(
            "----- {} ({}) -----{note}\n$ {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n----- end {} -----",
            self.name,
            match self.exited {
                Some(st) => format!("exited: {st}"),
                None => format!("pid {}", self.child.id()),
            },
            self.cmdline,
            self.stdout(),
            stderr,
            self.name
        )
    }

    /// `Some(status)` if the process has exited.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
            }
        }
        self.exited
    }

    /// `kill -SIG PID` through the shell's builtin `kill` (no libc here, and no need for
    /// procps's /bin/kill); panics if it fails.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{sig} {pid}"))
            .status()
            .expect("run sh -c kill");
        assert!(st.success(), "kill -{sig} {pid} failed: {st}");
    }

    /// SIGTERM, then waits (as [`wait_for_log`] does) for the line that says the drain began.
    pub fn terminate_and_await_drain(&self) {
        self.signal("TERM");
        wait_for_log(self, "draining open connections", 1);
    }

    /// Waits at most `timeout` for the process to exit; its status, or None.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exited() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics (with the logs) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_exited() {
            panic!("{} exited unexpectedly ({st})\n{}", self.name, self.logs());
        }
    }

    /// Waits until 127.0.0.1:`port` accepts TCP connections, at most [`READY_TIMEOUT`].
    pub fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.try_exited() {
                panic!(
                    "{} exited ({st}) before listening on 127.0.0.1:{port}\n{}",
                    self.name,
                    self.logs()
                );
            }
            if port_accepts(port) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not listen on 127.0.0.1:{port} within {:?}\n{}",
                    self.name,
                    READY_TIMEOUT,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.exited = Some(st);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = self.try_exited();
            eprintln!("{}", self.logs());
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Running helper commands (openssl, ss, scripts)
// ---------------------------------------------------------------------------

/// Output of [`run`].
#[derive(Debug)]
pub struct Ran {
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ran {
    pub fn success(&self) -> bool {
        matches!(self.status, Some(st) if st.success())
    }
    pub fn describe_status(&self) -> String {
        match (self.timed_out, self.status) {
            (true, _) => format!("timed out after {:?} (killed)", self.elapsed),
            (false, Some(st)) => format!("{st}"),
            (false, None) => "unknown status".into(),
        }
    }
}

/// Runs `cmd` with `stdin` (then closed), output captured through files, killed after
/// `timeout`. Proxy environment variables are removed. Panics if the program is
/// missing, naming it.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Ran {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_p = dir.path().join("out");
    let err_p = dir.path().join("err");
    cmd.stdout(fs::File::create(&out_p).expect("out"))
        .stderr(fs::File::create(&err_p).expect("err"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for v in PROXY_ENV {
        cmd.env_remove(v);
    }
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run {:?}: {e} (is it installed? CI installs curl, openssl, socat)",
            cmd.get_program()
        ),
    };
    if let Some(data) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        let _ = si.write_all(data);
        drop(si);
    }
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if start.elapsed() > timeout => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait: {e}"),
        }
    };
    Ran {
        status,
        timed_out,
        stdout: String::from_utf8_lossy(&fs::read(&out_p).unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&fs::read(&err_p).unwrap_or_default()).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Polls `cond` every 20 ms for at most `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGHUP to `p` and waits (at most 15 s) until it has logged the outcome of that
/// reload: `true` for "reload complete", `false` for "reload failed".
pub fn reload(p: &Proc) -> bool {
    let outcomes = |logs: &str| {
        (
            logs.matches("reload complete").count(),
            logs.matches("reload failed").count(),
        )
    };
    let before = outcomes(&p.stderr());
    p.signal("HUP");
    let mut after = before;
    assert!(
        wait_until(Duration::from_secs(15), || {
            after = outcomes(&p.stderr());
            after != before
        }),
        "{} logged no reload outcome within 15 s of SIGHUP\n{}",
        p.name,
        p.logs()
    );
    after.0 > before.0
}

/// Waits (at most 20 s, generous for a loaded machine) until `p`'s stderr holds `needle`
/// at least `count` times; panics with the logs otherwise.
pub fn wait_for_log(p: &Proc, needle: &str, count: usize) {
    assert!(
        wait_until(Duration::from_secs(20), || p
            .stderr()
            .matches(needle)
            .count()
            >= count),
        "{} did not log {needle:?} {count} time(s) within 20 s\n{}",
        p.name,
        p.logs()
    );
}

/// Waits until k_proxy `p` has started its `count`-th key operation (the key blinks).
pub fn wait_for_key_operation(p: &Proc, count: usize) {
    wait_for_log(p, "gate: asking the key", count);
}

/// True when the environment says this is CI (`CI=true`, as GitHub Actions, GitLab and
/// most CI systems set it): there a test may not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A test that cannot run here: says why on stderr and returns (the caller returns too),
/// except under `CI=true`, where it fails instead, so that CI cannot pass by skipping.
pub fn skip_or_fail(test: &str, why: &str) {
    if in_ci() {
        panic!("{test} cannot run on this machine, and CI=true forbids skipping it: {why}");
    }
    eprintln!("SKIPPED {test}: {why} (under CI=true this fails)");
}

/// Panics with an install hint if `program` cannot be executed.
pub fn require_tool(program: &str, version_arg: &str) {
    match Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{program}` is not installed: install it (e.g. `apt-get install {program}`); CI installs it"
        ),
        Err(e) => panic!("cannot run `{program}`: {e}"),
    }
}

// ---------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------

/// One HTTP exchange made with curl.
#[derive(Debug, Clone)]
pub struct Resp {
    /// HTTP status, 0 if curl got none.
    pub status: u16,
    /// Headers of the final response, in order (names as sent).
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// curl's exit code (0 = transfer fine).
    pub exit_code: i32,
    pub stderr: String,
    pub elapsed: Duration,
    /// The curl arguments given by the test (for failure messages).
    pub request: String,
}

impl Resp {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The body as JSON, or a panic showing the response.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}){}", self.ctx()))
    }
    /// The body as JSON if it is JSON.
    pub fn try_json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
    /// Context for assertion messages.
    pub fn ctx(&self) -> String {
        let mut body = self.body.clone();
        if body.len() > 2000 {
            let mut cut = 2000;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push_str("…(truncated)");
        }
        let mut req = self.request.clone();
        if req.len() > 600 {
            let mut cut = 600;
            while !req.is_char_boundary(cut) {
                cut -= 1;
            }
            req.truncate(cut);
            req.push_str("…(truncated)");
        }
        format!(
            "\n  request: curl {req}\n  curl exit: {} after {:?}; stderr: {}\n  status: {}\n  headers: {:?}\n  body: {}",
            self.exit_code,
            self.elapsed,
            self.stderr.trim(),
            self.status,
            self.headers,
            body
        )
    }

    /// Asserts `status` and returns the JSON body (or Null if the body is empty).
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected HTTP status{}", self.ctx());
        if self.body.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a JSON error answer: exact status, JSON content type, body
    /// `{"error": code, "message": <non-empty string>}`, and for 401 a
    /// `WWW-Authenticate: Bearer ...` header.
    pub fn expect_error(&self, status: u16, code: &str) {
        self.expect_error_in(status, &[code]);
    }

    /// Like [`Resp::expect_error`] but accepts any of `codes`.
    pub fn expect_error_in(&self, status: u16, codes: &[&str]) {
        self.expect_json_error(status, codes);
        if status == 401 {
            let wa = self.header("www-authenticate").unwrap_or("");
            assert!(
                wa.starts_with("Bearer"),
                "401 must carry `WWW-Authenticate: Bearer ...`, got {wa:?}{}",
                self.ctx()
            );
        }
    }

    /// The JSON error checks of [`Resp::expect_error`] without the
    /// `WWW-Authenticate` check (for k_server, which is not a Bearer realm).
    pub fn expect_json_error(&self, status: u16, codes: &[&str]) {
        assert_eq!(
            self.status,
            status,
            "expected HTTP {status} with error {codes:?}{}",
            self.ctx()
        );
        let v: Value = serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "error body must be JSON {{\"error\",\"message\"}} ({e}); expected error {codes:?}{}",
                self.ctx()
            )
        });
        let got = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("error body has no string `error` field{}", self.ctx()));
        assert!(
            codes.contains(&got),
            "expected error code {codes:?}, got {got:?}{}",
            self.ctx()
        );
        let msg = v.get("message").and_then(Value::as_str).unwrap_or("");
        assert!(
            !msg.trim().is_empty(),
            "error body must carry a non-empty `message` sentence{}",
            self.ctx()
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.to_ascii_lowercase().contains("application/json"),
            "error response must have Content-Type application/json, got {ct:?}{}",
            self.ctx()
        );
    }
}

/// Runs `curl -sS --noproxy '*' -o BODY -D HEADERS -w '%{http_code}' --max-time 20 <args>`.
pub fn curl<I, S>(args: I) -> Resp
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let body_p = dir.path().join("body");
    let hdr_p = dir.path().join("headers");
    let mut cmd = Command::new("curl");
    cmd.arg("-sS")
        .arg("--noproxy")
        .arg("*")
        .arg("-o")
        .arg(&body_p)
        .arg("-D")
        .arg(&hdr_p)
        .arg("-w")
        .arg("%{http_code}")
        .arg("--max-time")
        .arg("20")
        .args(&args);
    let ran = run(&mut cmd, None, Duration::from_secs(30));
    let request = args
        .iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') || a.is_empty() {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let status = ran.stdout.trim().parse::<u16>().unwrap_or(0);
    let raw_headers = String::from_utf8_lossy(&fs::read(&hdr_p).unwrap_or_default()).into_owned();
    Resp {
        status,
        headers: parse_last_header_block(&raw_headers),
        body: String::from_utf8_lossy(&fs::read(&body_p).unwrap_or_default()).into_owned(),
        exit_code: if ran.timed_out {
            -1
        } else {
            ran.status.and_then(|s| s.code()).unwrap_or(-1)
        },
        stderr: ran.stderr,
        elapsed: ran.elapsed,
        request,
    }
}

fn parse_last_header_block(raw: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<Vec<(String, String)>> = Vec::new();
    for line in raw.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            blocks.push(Vec::new());
        } else if let Some((k, v)) = line.split_once(':') {
            if let Some(b) = blocks.last_mut() {
                b.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    blocks.pop().unwrap_or_default()
}

/// Talks to one listener (k_proxy or k_server) with curl.
#[derive(Clone, Debug)]
pub struct Client {
    pub base: String,
    /// Extra curl arguments for every request (e.g. `--cacert`, `--cert`, `--key`).
    pub extra: Vec<String>,
}

impl Client {
    /// The port this client talks to (its base is `scheme://127.0.0.1:PORT`).
    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("client base {:?} does not end with :PORT", self.base))
    }

    /// `http://127.0.0.1:port`
    pub fn plain(port: u16) -> Client {
        Client {
            base: format!("http://127.0.0.1:{port}"),
            extra: Vec::new(),
        }
    }
    /// `https://127.0.0.1:port`, trusting only `ca`.
    pub fn tls(port: u16, ca: &Path) -> Client {
        Client {
            base: format!("https://127.0.0.1:{port}"),
            extra: vec!["--cacert".into(), s(ca)],
        }
    }
    /// Adds a client certificate.
    pub fn with_client_cert(mut self, crt: &Path, key: &Path) -> Client {
        self.extra
            .extend(["--cert".into(), s(crt), "--key".into(), s(key)]);
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `curl <extra> -X method <url> -H h... <more>`
    pub fn req(&self, method: &str, path: &str, headers: &[&str], more: &[&str]) -> Resp {
        let mut a: Vec<String> = self.extra.clone();
        a.push("-X".into());
        a.push(method.into());
        for h in headers {
            a.push("-H".into());
            a.push((*h).into());
        }
        a.extend(more.iter().map(|m| m.to_string()));
        a.push(self.url(path));
        curl(a)
    }

    pub fn healthz(&self) -> Resp {
        self.req("GET", "/healthz", &[], &[])
    }

    /// The runbook's login request.
    pub fn login(&self, username: &str) -> Resp {
        let body = json!({ "username": username }).to_string();
        self.req(
            "POST",
            "/session/login",
            &["Content-Type: application/json"],
            &["--data-binary", &body],
        )
    }

    /// A login with this JSON body, sent from a private temp file (a PIN in the body
    /// never appears in curl's argv).
    pub fn login_body(&self, body: &Value) -> Resp {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, body.to_string().as_bytes()).expect("write body");
        let at = format!("@{}", file.path().display());
        self.req(
            "POST",
            "/session/login",
            &["Content-Type: application/json"],
            &["--data-binary", &at],
        )
    }

    /// Logs in and returns the session token, asserting the 200 answer's shape.
    pub fn login_ok(&self, username: &str) -> String {
        let r = self.login(username);
        let v = r.expect(200);
        let tok = v
            .get("session_token")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("login answer lacks session_token{}", r.ctx()))
            .to_string();
        assert_eq!(
            v.get("token_type"),
            Some(&json!("Bearer")),
            "token_type{}",
            r.ctx()
        );
        assert_eq!(
            v.get("username"),
            Some(&json!(username)),
            "username{}",
            r.ctx()
        );
        assert!(
            v.get("expires_in").and_then(Value::as_u64).is_some(),
            "expires_in must be a non-negative integer{}",
            r.ctx()
        );
        assert!(
            tok.len() >= 43
                && tok
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "session_token must be >= 43 base64url chars (>= 256 bits), got {tok:?}{}",
            r.ctx()
        );
        tok
    }

    pub fn bearer(tok: &str) -> String {
        format!("Authorization: Bearer {tok}")
    }

    pub fn status(&self, tok: &str) -> Resp {
        self.req("POST", "/session/status", &[&Client::bearer(tok)], &[])
    }
    pub fn logout(&self, tok: &str) -> Resp {
        self.req("POST", "/session/logout", &[&Client::bearer(tok)], &[])
    }
    /// `POST /resource/counter` through k_proxy.
    pub fn counter_post(&self, tok: &str) -> Resp {
        self.req("POST", "/resource/counter", &[&Client::bearer(tok)], &[])
    }
    pub fn counter_get(&self, tok: &str) -> Resp {
        self.req("GET", "/resource/counter", &[&Client::bearer(tok)], &[])
    }
}

/// Reads `counter` from a 200 counter answer.
pub fn counter_of(r: &Resp) -> u64 {
    let v = r.expect(200);
    v.get("counter")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("counter answer lacks an integer `counter`{}", r.ctx()))
}

/// The runbook's curl flow, checked by the harness itself: login, status, two counter
/// increments (consecutive values, user alice), logout, then the token is dead
/// (401 with a JSON error on resource and status). Returns the last counter value.
pub fn runbook_flow(c: &Client) -> u64 {
    let tok = c.login_ok("alice");
    let st = c.status(&tok);
    let v = st.expect(200);
    assert_eq!(
        v.get("active"),
        Some(&json!(true)),
        "status.active{}",
        st.ctx()
    );
    assert_eq!(
        v.get("username"),
        Some(&json!("alice")),
        "status.username{}",
        st.ctx()
    );
    let r1 = c.counter_post(&tok);
    let n1 = counter_of(&r1);
    assert_eq!(
        r1.json().get("user"),
        Some(&json!("alice")),
        "counter answer names the session's user{}",
        r1.ctx()
    );
    let r2 = c.counter_post(&tok);
    let n2 = counter_of(&r2);
    assert_eq!(
        n2,
        n1 + 1,
        "second increment must be consecutive{}",
        r2.ctx()
    );
    c.logout(&tok).expect(200);
    // The runbook only asks for a 401 here; the exact code is checked in sessions.rs.
    for r in [c.counter_post(&tok), c.status(&tok)] {
        assert_eq!(r.status, 401, "a logged-out token must get 401{}", r.ctx());
        assert!(
            r.try_json()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .is_some(),
            "401 must carry a JSON error body{}",
            r.ctx()
        );
    }
    n2
}

/// A login + one counter increment; returns the counter value.
pub fn login_and_count(c: &Client) -> u64 {
    let tok = c.login_ok("alice");
    counter_of(&c.counter_post(&tok))
}

/// `GET /metrics` from k_proxy's admin listener on `port` (Prometheus text, checked).
pub fn scrape_metrics(port: u16) -> String {
    let r = curl([format!("http://127.0.0.1:{port}/metrics")]);
    assert_eq!(r.status, 200, "{}", r.ctx());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{}",
        r.ctx()
    );
    r.body
}

/// The value of one series (name with labels, as printed) in scraped metrics.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

// ---------------------------------------------------------------------------
// Common set-ups
// ---------------------------------------------------------------------------

/// k_server over plain HTTP on a free port, token `PROXY_TOKEN` on the command line.
pub fn start_server_plain() -> (Proc, u16) {
    let port = free_port();
    let p = Spawn::k_server()
        .args(["--port", &port.to_string(), "--proxy-token", PROXY_TOKEN])
        .start(port);
    (p, port)
}

/// k_server with mutual TLS (certs of `certs`) on a free port.
pub fn start_server_tls(certs: &Certs) -> (Proc, u16) {
    let port = free_port();
    (k_server_tls(certs, port).start(port), port)
}

/// k_server on 127.0.0.1:`port` with the runbook's proxy token and the certificate and
/// key from `certs` (so mutual TLS, with `ca.crt` beside them as the client CA), ready
/// for more flags before it is started.
pub fn k_server_tls(certs: &Certs, port: u16) -> Spawn {
    Spawn::k_server().args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--proxy-token",
        PROXY_TOKEN,
        "--tls-certfile",
        &s(certs.server_crt()),
        "--tls-keyfile",
        &s(certs.server_key()),
    ])
}

/// k_proxy on 127.0.0.1:`port` serving TLS with `certs`' proxy certificate and forwarding
/// to the k_server at `sport`, trusting `certs`' CA for it. No gate flags: the caller adds
/// them.
pub fn k_proxy_tls(certs: &Certs, port: u16, sport: u16) -> Spawn {
    k_proxy_tls_trusting(certs, &certs.ca(), port, sport)
}

/// [`k_proxy_tls`] trusting `server_ca` (not necessarily `certs`' CA) for k_server.
pub fn k_proxy_tls_trusting(certs: &Certs, server_ca: &Path, port: u16, sport: u16) -> Spawn {
    Spawn::k_proxy().args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--server-base-url",
        &format!("https://127.0.0.1:{sport}"),
        "--server-ca-file",
        &s(server_ca),
        "--proxy-token",
        PROXY_TOKEN,
        "--tls-certfile",
        &s(certs.proxy_crt()),
        "--tls-keyfile",
        &s(certs.proxy_key()),
    ])
}

/// k_proxy (plain HTTP towards clients, `--gate soft`) in front of `server_base_url`,
/// with extra flags. Returns the process, its port and a client for it.
pub fn start_proxy_plain(server_base_url: &str, extra: &[&str]) -> (Proc, u16, Client) {
    let port = free_port();
    let p = Spawn::k_proxy()
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--server-base-url",
            server_base_url,
            "--proxy-token",
            PROXY_TOKEN,
        ])
        .args(extra)
        .start(port);
    (p, port, Client::plain(port))
}

/// k_proxy with plain HTTP towards the test's clients and mutual TLS towards the k_server
/// at `sport` (the real hop: `--server-ca-file` and k_proxy's client certificate from
/// `certs`), `--gate soft`, plus `extra` flags.
pub fn start_proxy_plain_to_tls(certs: &Certs, sport: u16, extra: &[&str]) -> (Proc, u16, Client) {
    let (ca, crt, key) = (s(certs.ca()), s(certs.proxy_crt()), s(certs.proxy_key()));
    let mut args = vec![
        "--server-ca-file",
        &ca,
        "--client-certfile",
        &crt,
        "--client-keyfile",
        &key,
        "--gate",
        "soft",
    ];
    args.extend_from_slice(extra);
    start_proxy_plain(&format!("https://127.0.0.1:{sport}"), &args)
}

/// The full split-VM shape on ephemeral ports: k_server with mTLS, k_proxy serving TLS
/// and talking mTLS to k_server, `--gate soft`. Returns (server, proxy, client of proxy).
pub fn start_tls_chain(certs: &Certs) -> (Proc, u16, Proc, Client) {
    start_tls_chain_with(certs, &["--gate", "soft"])
}

/// [`start_tls_chain`] with k_proxy's gate flags given by the caller (`--gate fido2 ...`).
pub fn start_tls_chain_with(certs: &Certs, gate_flags: &[&str]) -> (Proc, u16, Proc, Client) {
    let (server, sport) = start_server_tls(certs);
    let pport = free_port();
    let proxy = k_proxy_tls(certs, pport, sport)
        .args(["--session-ttl", "300"])
        .args(gate_flags)
        .start(pport);
    (server, sport, proxy, Client::tls(pport, &certs.ca()))
}

/// Runs `scripts/runbook.sh` (the prototype's curl flow) against k_proxy's TLS port as
/// `username`; panics with its output (and `context`) unless all five steps pass.
pub fn assert_runbook_passes(port: u16, ca: &Path, username: &str, context: &dyn Fn() -> String) {
    let ran = run(
        Command::new(workspace_file("scripts/runbook.sh")).args([
            "--port",
            &port.to_string(),
            "--cacert",
            &s(ca),
            "--username",
            username,
        ]),
        None,
        Duration::from_secs(120),
    );
    assert!(
        ran.success() && ran.stdout.contains("runbook: all 5 steps passed"),
        "runbook.sh against k_proxy on {port}: {}\n{}\n{}\n{}",
        ran.describe_status(),
        ran.stdout,
        ran.stderr,
        context()
    );
}

/// A running virtual FIDO2 key (`chromecard-vkey`) and the hidraw node it made.
/// Needs `/dev/uhid` (root; scripts/test.sh runs such tests in a VM).
pub struct VKey {
    pub proc: Proc,
    pub hidraw: String,
}

impl VKey {
    /// Starts `chromecard-vkey` with `args` and waits (at most 20 s) for the hidraw
    /// path it prints first on stdout.
    pub fn start(args: &[&str]) -> VKey {
        let mut proc = Spawn::program("chromecard-vkey", bin_path("chromecard-vkey"))
            .args(args)
            .spawn();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = proc.stdout().lines().next() {
                if line.starts_with("/dev/hidraw") {
                    return VKey {
                        hidraw: line.to_string(),
                        proc,
                    };
                }
            }
            if let Some(st) = proc.try_exited() {
                panic!(
                    "chromecard-vkey exited ({st}) before its device was ready\n{}",
                    proc.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromecard-vkey printed no hidraw path within 20 s\n{}",
                proc.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the key logged (every CTAPHID command and CTAP2 request it received).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// How many times the key logged `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }
}

/// Sets the PIN of the software authenticator's (or the virtual key's) key file at
/// `key_file` as a person would with a FIDO2 tool: what the key keeps of it,
/// `LEFT(SHA-256(pin), 16)`, and `retries` tries left. The file must exist.
pub fn set_key_file_pin(key_file: &Path, pin: &str, retries: u8) {
    use base64::Engine as _;
    use sha2::Digest as _;
    let text = fs::read_to_string(key_file).expect("read the key file");
    let mut kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("pin_hash ") && !l.starts_with("pin_retries "))
        .collect();
    let hash = base64::engine::general_purpose::STANDARD
        .encode(&sha2::Sha256::digest(pin.as_bytes())[..16]);
    let hash_line = format!("pin_hash {hash}");
    let retries_line = format!("pin_retries {retries}");
    kept.push(&hash_line);
    kept.push(&retries_line);
    fs::write(key_file, kept.join("\n") + "\n").expect("write the key file");
}

/// The `pin_retries` a key file holds (8 when it holds none).
pub fn key_file_pin_retries(key_file: &Path) -> u8 {
    fs::read_to_string(key_file)
        .expect("read the key file")
        .lines()
        .find_map(|l| l.strip_prefix("pin_retries "))
        .map_or(8, |n| n.trim().parse().expect("pin_retries N"))
}

/// An enrolment file and virtual-key files in one private temp dir, for the
/// `--gate fido2` tests (e2e/tests/usbkey.rs, qubes_ctap.rs).
pub struct UsbKeyring {
    dir: TempDir,
}

impl Default for UsbKeyring {
    fn default() -> Self {
        Self::new()
    }
}

impl UsbKeyring {
    pub fn new() -> UsbKeyring {
        let dir = tempfile::Builder::new()
            .prefix("chromecard-usb-")
            .tempdir()
            .expect("tempdir");
        UsbKeyring { dir }
    }
    pub fn key_file(&self, name: &str) -> String {
        s(self.dir.path().join(name))
    }
    pub fn creds(&self) -> String {
        s(self.dir.path().join("credentials"))
    }
    /// A virtual key with the key file `name` and extra switches.
    pub fn vkey(&self, name: &str, extra: &[&str]) -> VKey {
        let file = self.key_file(name);
        let mut args = vec!["--key-file", &file];
        args.extend_from_slice(extra);
        VKey::start(&args)
    }
    pub fn gate_flags(&self, touch_timeout: &str) -> Vec<String> {
        [
            "--gate",
            "fido2",
            "--credentials-file",
            &self.creds(),
            "--touch-timeout",
            touch_timeout,
        ]
        .map(String::from)
        .to_vec()
    }
    /// `k_proxy enroll --username USER EXTRA...` on the USB key, run to its exit.
    pub fn enroll(&self, user: &str, extra: &[&str]) -> Exited {
        Spawn::k_proxy()
            .args(["enroll", "--username", user])
            .args(extra)
            .args(self.gate_flags("10"))
            .run_to_exit(Duration::from_secs(30))
    }
    pub fn enroll_ok(&self, user: &str) {
        let e = self.enroll(user, &[]);
        assert!(
            e.status.is_some_and(|st| st.success()),
            "k_proxy enroll over USB failed: {e:?}"
        );
        assert!(e.stdout.contains(&format!("enrolled {user}")), "{e:?}");
    }
    /// k_proxy at the assertion level on the USB key, login only (dead upstream).
    pub fn proxy(&self, touch_timeout: &str, extra: &[&str]) -> (Proc, Client) {
        let dead = free_port();
        let mut args = self.gate_flags(touch_timeout);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (p, _port, c) = start_proxy_plain(&format!("http://127.0.0.1:{dead}"), &args);
        (p, c)
    }
}

/// How long k_proxy itself took over its last `/session/login`, from its access log.
/// Under the CI's emulated VM, starting curl alone can take a second, so the deadline
/// is judged on the server's own clock.
pub fn last_login_took(proxy: &Proc) -> Duration {
    // A login's audit line is on stderr before its answer; its access line follows through
    // k_proxy's log writer thread within moments: wait until every login has one.
    let audited = |log: &str| {
        log.lines()
            .filter(|l| l.contains("event=\"login\"") || l.contains("event=\"login_refused\""))
            .count()
    };
    let accessed = |log: &str| {
        log.lines()
            .filter(|l| l.contains(" request ") && l.contains("path=/session/login"))
            .count()
    };
    wait_until(Duration::from_secs(5), || {
        let log = proxy.stderr();
        accessed(&log) >= audited(&log)
    });
    let log = proxy.stderr();
    let micros = log
        .lines()
        .filter(|l| l.contains("path=/session/login"))
        .filter_map(|l| l.split("micros=").nth(1))
        .filter_map(|m| m.split_whitespace().next()?.parse::<u64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no /session/login in k_proxy's access log:\n{log}"));
    Duration::from_micros(micros)
}

/// A client that talks to k_server directly as k_proxy would (k_proxy's client cert).
pub fn server_client_as_proxy(sport: u16, certs: &Certs) -> Client {
    Client::tls(sport, &certs.ca()).with_client_cert(&certs.proxy_crt(), &certs.proxy_key())
}

/// Headers k_proxy would send to k_server for user `user`.
pub fn proxy_headers(user: &str) -> [String; 2] {
    [
        format!("X-Proxy-Token: {PROXY_TOKEN}"),
        format!("X-Chromecard-User: {user}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_paths_keep_escaped_spaces() {
        assert_eq!(
            dep_info_paths("/a/b.rs /c\\ d/e.rs  /f.rs"),
            [
                PathBuf::from("/a/b.rs"),
                PathBuf::from("/c d/e.rs"),
                PathBuf::from("/f.rs")
            ]
        );
    }

    #[test]
    fn a_binary_older_than_a_source_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("main.rs");
        let bin = dir.path().join("tool");
        fs::write(&bin, "").unwrap();
        fs::write(&source, "").unwrap();
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&bin)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        fs::write(
            dir.path().join("tool.d"),
            format!("{}: {}\n", bin.display(), source.display()),
        )
        .unwrap();
        let refused = std::panic::catch_unwind(|| refuse_stale(&bin)).unwrap_err();
        let message = refused.downcast_ref::<String>().unwrap();
        assert!(message.contains("cargo build --workspace"), "{message}");
    }

    #[test]
    fn parses_last_header_block() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nX-A: b: c\r\n\r\n";
        let h = parse_last_header_block(raw);
        assert_eq!(
            h,
            vec![
                ("Content-Type".to_string(), "application/json".to_string()),
                ("X-A".to_string(), "b: c".to_string())
            ]
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!(port_is_free(a));
    }
}
