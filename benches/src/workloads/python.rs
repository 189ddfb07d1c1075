//! Python's `multiprocessing` as a peer: one long-lived `python3` process running `peer.py`,
//! which keeps its pools and echo children between commands and times only the work itself.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{ContenderSpec, Kind, Runner};

const SCRIPT: &str = include_str!("peer.py");

struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);
static MISSING: Mutex<Option<String>> = Mutex::new(None);

fn start() -> Result<Server, String> {
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("python3 not available ({e}); Python's multiprocessing not measured")
        })?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    Ok(Server {
        child,
        stdin,
        stdout,
    })
}

/// Sends one command to the Python server (started on first use); returns its answer.
pub fn command(line: &str) -> Result<String, String> {
    if let Some(why) = MISSING.lock().map_err(|e| e.to_string())?.clone() {
        return Err(why);
    }
    let mut guard = SERVER.lock().map_err(|e| e.to_string())?;
    if guard.is_none() {
        match start() {
            Ok(s) => *guard = Some(s),
            Err(why) => {
                *MISSING.lock().map_err(|e| e.to_string())? = Some(why.clone());
                return Err(why);
            }
        }
    }
    let server = guard.as_mut().ok_or("no server")?;
    let answer = (|| -> std::io::Result<String> {
        writeln!(server.stdin, "{line}")?;
        server.stdin.flush()?;
        let mut out = String::new();
        server.stdout.read_line(&mut out)?;
        Ok(out)
    })()
    .map_err(|e| format!("python3: {e}"))?;
    let answer = answer.trim();
    if let Some(ok) = answer.strip_prefix("ok ") {
        Ok(ok.to_string())
    } else if answer.is_empty() {
        *guard = None;
        Err("python3 exited".into())
    } else {
        Err(format!("python3: {answer}"))
    }
}

/// Python's version, or why it is not measured.
pub fn version() -> Result<String, String> {
    command("version")
}

/// Stops the Python server (its pools and children go with it).
pub fn shutdown() {
    if let Ok(mut guard) = SERVER.lock()
        && let Some(mut s) = guard.take()
    {
        drop(s.stdin);
        let _ = s.child.wait();
    }
}

/// A contender that sends `"{cmd} {iters}"` and reads back the seconds the work took.
pub fn contender(name: &str, cmd: String, ops_per_iter: u64) -> ContenderSpec {
    ContenderSpec::new(name, Kind::Python, move || {
        version()?;
        Ok(Runner::new(ops_per_iter, move |iters| {
            let secs: f64 = command(&format!("{cmd} {iters}"))?
                .parse()
                .map_err(|e| format!("python3 answered a non-number: {e}"))?;
            Ok(Duration::from_secs_f64(secs.max(0.0)))
        }))
    })
}
