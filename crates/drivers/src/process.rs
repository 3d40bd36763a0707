//! Child processes (pg_dump, pg_restore, docker, ...): stdout streamed as an [`AsyncRead`],
//! stdin fed as an [`AsyncWrite`], stderr drained on the side into a bounded tail, and the
//! exit status (or the signal that killed the child) turned into an
//! [`ErrorKind::ExternalCommand`] error that quotes the end of stderr.
//!
//! Every child is spawned with `kill_on_drop(true)`: when a backup or restore fails and its
//! reader or writer is dropped, the child dies with it.
//!
//! Secrets go to children through their environment (`Command::env`), never their arguments,
//! so they do not show in `ps`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use drkit_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;

/// Largest chunk a [`ProcessReader`] hands over at once.
pub const READ_CHUNK: usize = 256 * 1024;

/// The pipe size asked for a child's stdout (Linux allows up to 1 MiB to anyone).
const PIPE_SIZE: usize = 1 << 20;

/// Read `file` (a pipe) to its end in chunks of [`READ_CHUNK`] and send them; stops when
/// the receiver is gone.
///
/// Writers like pg_dump write 4 KiB at a time; a reader that waits on an empty pipe is woken
/// for each write. With a large pipe, the pump waits a little after a short read instead,
/// so that it reads large pieces: far fewer wake-ups, the same throughput (the pipe would
/// need a writer faster than 2 GB/s to fill up meanwhile).
fn pump(mut file: std::fs::File, tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>) {
    use std::io::Read;
    let big_pipe =
        rustix::pipe::fcntl_setpipe_size(&file, PIPE_SIZE).is_ok_and(|n| n >= PIPE_SIZE / 2);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut filled = 0;
    let mut short = false;
    loop {
        if big_pipe && short {
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        match file.read(&mut buf[filled..]) {
            Ok(0) => {
                if filled > 0 {
                    buf.truncate(filled);
                    let _ = tx.blocking_send(Ok(buf));
                }
                return;
            }
            Ok(n) => {
                filled += n;
                short = n < READ_CHUNK / 4;
                if filled == READ_CHUNK {
                    let full = std::mem::replace(&mut buf, vec![0u8; READ_CHUNK]);
                    filled = 0;
                    if tx.blocking_send(Ok(full)).is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

/// How many bytes of a child's stderr are kept (the end of it).
pub const STDERR_TAIL: usize = 16 * 1024;

/// The last [`STDERR_TAIL`] bytes a child wrote to stderr, filled by a drain task.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    fn push(&self, data: &[u8]) {
        let mut buf = self.0.lock().expect("stderr tail");
        buf.extend_from_slice(data);
        if buf.len() > STDERR_TAIL {
            let cut = buf.len() - STDERR_TAIL;
            buf.drain(..cut);
        }
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("stderr tail")).into_owned()
    }
}

/// How a child ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// The end of what it wrote to stderr.
    pub stderr: String,
}

impl Finished {
    /// `Ok(self)` when the child exited with status 0, else an
    /// [`ErrorKind::ExternalCommand`] error naming `name`, the status and the gist of stderr.
    pub fn check(self, name: &str) -> Result<Finished> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(Error::external(failure_message(
                name,
                &self.status,
                &self.stderr,
            )))
        }
    }
}

/// A running child whose stderr is drained into a bounded tail.
pub struct Process {
    name: String,
    child: Child,
    tail: Tail,
    drain: Option<JoinHandle<()>>,
}

impl Process {
    /// Spawn `cmd` (called `name` in messages). stderr is always piped and drained; the
    /// caller sets stdin and stdout. The child is killed if the `Process` is dropped.
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Process> {
        cmd.stderr(Stdio::piped()).kill_on_drop(true);
        // The program only: arguments may name databases, never secrets (those go by the
        // environment), but the program is what an operator needs to see.
        tracing::debug!(
            "starting {name} ({})",
            cmd.as_std().get_program().to_string_lossy()
        );
        let mut child = cmd.spawn().map_err(|e| spawn_error(cmd, name, e))?;
        let tail = Tail::default();
        let drain = child.stderr.take().map(|mut stderr| {
            let tail = tail.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = stderr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tail.push(&buf[..n]);
                }
            })
        });
        Ok(Process {
            name: name.to_string(),
            child,
            tail,
            drain,
        })
    }

    /// Spawn `cmd` with stdout piped and stdin closed, and return its stdout as a reader
    /// that checks the exit status at its end.
    ///
    /// stdout is read on a thread of its own with blocking reads, in chunks of up to
    /// [`READ_CHUNK`] bytes: programs such as pg_dump write in 4 KiB pieces, and waking the
    /// async runtime for each of them costs more CPU than the data is worth.
    pub fn reader(cmd: &mut Command, name: &str) -> Result<ProcessReader> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut p = Process::spawn(cmd, name)?;
        let stdout = p.child.stdout.take().expect("stdout piped");
        let fd = stdout
            .into_owned_fd()
            .map_err(|e| Error::external(format!("reading the output of {name}: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        std::thread::Builder::new()
            .name("drkit-stdout".into())
            .spawn(move || pump(std::fs::File::from(fd), tx))
            .map_err(|e| Error::external(format!("cannot start a thread to read {name}: {e}")))?;
        Ok(ProcessReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            process: Some(p),
            waiting: None,
            done: false,
        })
    }

    /// Spawn `cmd` with stdin piped and stdout discarded, and return a writer to its stdin.
    pub fn writer(cmd: &mut Command, name: &str) -> Result<ProcessWriter> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::null());
        let mut p = Process::spawn(cmd, name)?;
        let stdin = p.child.stdin.take().expect("stdin piped");
        Ok(ProcessWriter {
            stdin: Some(stdin),
            process: p,
        })
    }

    /// Wait for the child to exit and for its stderr to be drained.
    pub async fn wait(mut self) -> Result<Finished> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| Error::external(format!("waiting for {}: {e}", self.name)))?;
        if let Some(drain) = self.drain.take() {
            // Grandchildren may hold stderr open: do not wait for them forever.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
        }
        Ok(Finished {
            status,
            stderr: self.tail.text(),
        })
    }

    /// Wait, and fail unless the child exited with status 0.
    pub async fn wait_ok(self) -> Result<Finished> {
        let name = self.name.clone();
        self.wait().await?.check(&name)
    }
}

/// Run `cmd` to its end and return its stdout (at most `limit` bytes are kept) when it exits
/// with status 0.
pub async fn output(cmd: &mut Command, name: &str, limit: usize) -> Result<String> {
    let mut reader = Process::reader(cmd, name)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = reader.read(&mut buf).await.map_err(|e| {
            drkit_core::from_io(
                e,
                ErrorKind::ExternalCommand,
                format!("reading the output of {name}"),
            )
        })?;
        if n == 0 {
            break;
        }
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn spawn_error(cmd: &Command, name: &str, e: io::Error) -> Error {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    if e.kind() == io::ErrorKind::NotFound {
        Error::config(format!(
            "cannot run {name}: program {program:?} not found: install it or configure its path"
        ))
    } else if e.kind() == io::ErrorKind::PermissionDenied {
        Error::config(format!(
            "cannot run {name}: program {program:?} is not executable by drkit's user"
        ))
    } else {
        Error::external(format!("cannot start {name} ({program}): {e}"))
    }
}

type WaitFuture = Pin<Box<dyn Future<Output = Result<Finished>> + Send>>;

/// A child's stdout. At its end it waits for the child: a child that exited non-zero or was
/// killed turns the end of the stream into an error (an [`ErrorKind::ExternalCommand`]
/// [`Error`] carried in the `io::Error`), so a reader never mistakes a failed dump for a
/// complete one. Dropping it kills the child.
pub struct ProcessReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    process: Option<Process>,
    waiting: Option<WaitFuture>,
    done: bool,
}

impl AsyncRead for ProcessReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.done || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.waiting.is_none() {
            if this.pos < this.chunk.len() {
                let n = buf.remaining().min(this.chunk.len() - this.pos);
                buf.put_slice(&this.chunk[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let n = buf.remaining().min(chunk.len());
                    buf.put_slice(&chunk[..n]);
                    this.chunk = chunk;
                    this.pos = n;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(None) => {
                    let p = this.process.take().expect("process kept until the end");
                    this.waiting = Some(Box::pin(p.wait_ok()));
                }
                Poll::Ready(Some(Err(e))) => {
                    let name = this
                        .process
                        .as_ref()
                        .map(|p| p.name.clone())
                        .unwrap_or_default();
                    return Poll::Ready(Err(Error::external(format!(
                        "reading the output of {name}: {e}"
                    ))
                    .into()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let waiting = this.waiting.as_mut().expect("set above");
        match waiting.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                this.waiting = None;
                this.done = true;
                match r {
                    Ok(_) => Poll::Ready(Ok(())),
                    Err(e) => Poll::Ready(Err(e.into())),
                }
            }
        }
    }
}

/// A child's stdin. Close it and check the exit status with [`ProcessWriter::finish`];
/// throw the child away with [`ProcessWriter::kill`]. Dropping it kills the child.
pub struct ProcessWriter {
    stdin: Option<ChildStdin>,
    process: Process,
}

impl ProcessWriter {
    /// Write all of `data` to the child's stdin. When the child has gone away (a broken
    /// pipe), the error says why it went, from its exit status and stderr.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            Error::external(format!(
                "{}: its input is already closed",
                self.process.name
            ))
        })?;
        match stdin.write_all(data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.died(e).await),
        }
    }

    async fn died(&mut self, e: io::Error) -> Error {
        self.stdin.take();
        // The child stopped reading: it most likely failed; its status says why.
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            self.process.child.wait(),
        )
        .await;
        if let Some(drain) = self.process.drain.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
        }
        let stderr = self.process.tail.text();
        match waited {
            Ok(Ok(status)) if !status.success() => {
                Error::external(failure_message(&self.process.name, &status, &stderr))
            }
            _ => Error::external(format!(
                "{} stopped reading its input ({e}){}",
                self.process.name,
                summary_suffix(&stderr)
            )),
        }
    }

    /// Close stdin (end of input), wait for the child, and fail unless it exited with 0.
    pub async fn finish(mut self) -> Result<Finished> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.shutdown().await;
            drop(stdin);
        }
        self.process.wait_ok().await
    }
}

/// `": <gist of stderr>"`, or nothing when stderr is empty.
fn summary_suffix(stderr: &str) -> String {
    let s = stderr_summary(stderr);
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// One line out of a child's stderr: the first line that reports an error (`error:`,
/// `FATAL:`, `ERROR:`, `fatal:`), else the last non-empty line; whitespace collapsed,
/// at most 400 characters.
pub fn stderr_summary(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let markers = ["error:", "FATAL:", "ERROR:", "fatal:", "Error:", "PANIC:"];
    let pick = lines
        .iter()
        .find(|l| markers.iter().any(|m| l.contains(m)))
        .or_else(|| lines.last())
        .copied()
        .unwrap_or("");
    let mut one: String = pick.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 400 {
        one = one.chars().take(400).collect::<String>() + "...";
    }
    one
}

/// The name of a signal, for messages.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// `"<name> failed (exit code 1): <gist>"` or `"<name> was killed by signal 9 (SIGKILL)"`:
/// one line for a child that did not exit with status 0.
pub fn failure_message(name: &str, status: &ExitStatus, stderr: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("{name} failed (exit code {code})"),
        (None, Some(sig)) => format!("{name} was killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => format!("{name} failed ({status})"),
    };
    format!("{how}{}", summary_suffix(stderr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn summaries() {
        let cases = [
            ("", ""),
            ("just a note\n", "just a note"),
            (
                "pg_dump: warning: x\npg_dump: error: connection to server failed: FATAL:  password authentication failed\nmore\n",
                "pg_dump: error: connection to server failed: FATAL: password authentication failed",
            ),
            ("a\n\n  last line  \n\n", "last line"),
        ];
        for (input, want) in cases {
            assert_eq!(stderr_summary(input), want, "{input:?}");
        }
        assert!(stderr_summary(&"x".repeat(1000)).len() < 410);
    }

    #[test]
    fn failure_messages() {
        let cases = [
            (
                ExitStatus::from_raw(1 << 8),
                "",
                "pg_dump failed (exit code 1)",
            ),
            (
                ExitStatus::from_raw(9),
                "",
                "pg_dump was killed by signal 9 (SIGKILL)",
            ),
            (
                ExitStatus::from_raw(2 << 8),
                "pg_dump: error: boom\n",
                "pg_dump failed (exit code 2): pg_dump: error: boom",
            ),
        ];
        for (status, stderr, want) in cases {
            assert_eq!(failure_message("pg_dump", &status, stderr), want);
        }
    }

    #[test]
    fn tail_keeps_the_end() {
        let t = Tail::default();
        t.push(&vec![b'a'; STDERR_TAIL]);
        t.push(b"end");
        let text = t.text();
        assert_eq!(text.len(), STDERR_TAIL);
        assert!(text.ends_with("end"));
    }

    #[tokio::test]
    async fn reader_streams_and_checks_status() {
        let mut ok = Command::new("sh");
        ok.args(["-c", "printf hello; echo note >&2"]);
        let mut r = Process::reader(&mut ok, "sh").unwrap();
        let mut got = String::new();
        r.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");

        let mut bad = Command::new("sh");
        bad.args(["-c", "printf part; echo 'sh: error: it broke' >&2; exit 3"]);
        let mut r = Process::reader(&mut bad, "sh").unwrap();
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).await.unwrap_err();
        let e = drkit_core::from_io(e, ErrorKind::Source, "x");
        assert_eq!(e.kind(), ErrorKind::ExternalCommand);
        assert_eq!(
            e.to_string(),
            "sh failed (exit code 3): sh: error: it broke"
        );
        assert_eq!(got, b"part");

        let mut killed = Command::new("sh");
        killed.args(["-c", "printf x; kill -9 $$"]);
        let mut r = Process::reader(&mut killed, "sh").unwrap();
        let e = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert!(
            e.to_string().contains("killed by signal 9 (SIGKILL)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn reader_passes_every_byte_in_order() {
        // More than a few chunks, written in small pieces and in one go.
        for script in [
            "i=0; while [ $i -lt 3000 ]; do printf '%05d:%0994d\\n' $i 0; i=$((i+1)); done",
            "seq 1 400000",
        ] {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            let mut r = Process::reader(&mut c, "sh").unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            let want = std::process::Command::new("sh")
                .args(["-c", script])
                .output()
                .unwrap()
                .stdout;
            assert!(
                want.len() > 2 * READ_CHUNK,
                "{script}: too little data to cross chunks"
            );
            assert_eq!(got.len(), want.len(), "{script}");
            assert!(got == want, "{script}: bytes differ");
        }
    }

    #[tokio::test]
    async fn missing_program_is_a_config_error() {
        let mut c = Command::new("/nonexistent/drkit-no-such-program");
        let e = Process::reader(&mut c, "tool").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[tokio::test]
    async fn writer_reports_why_the_child_stopped() {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "head -c 3 >/dev/null; echo 'tool: error: bad input' >&2; exit 4",
        ]);
        let mut w = Process::writer(&mut c, "tool").unwrap();
        let big = vec![0u8; 4 << 20];
        let e = w.send(&big).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "tool failed (exit code 4): tool: error: bad input"
        );

        let mut c = Command::new("sh");
        c.args(["-c", "wc -c >&2"]);
        let mut w = Process::writer(&mut c, "wc").unwrap();
        w.send(b"12345").await.unwrap();
        let done = w.finish().await.unwrap();
        assert_eq!(done.stderr.trim(), "5");
    }

    #[tokio::test]
    async fn output_captures_stdout() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo 'pg_dump (PostgreSQL) 15.4'"]);
        assert_eq!(
            output(&mut c, "pg_dump", 1024).await.unwrap().trim(),
            "pg_dump (PostgreSQL) 15.4"
        );
    }
}
