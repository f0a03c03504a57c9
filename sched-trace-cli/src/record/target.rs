//! The processes a recording is about: a command the recorder starts (held before `exec` until
//! the probes are attached, so not one of its events is missed), or running processes by PID.

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use tokio::io::unix::AsyncFd;

use super::RecordError;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The exit code a shell would report: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// A child process forked and waiting for [`LaunchedCommand::release`] before it `exec`s.
pub struct LaunchedCommand {
    pid: u32,
    argv: Vec<String>,
    /// The executable, resolved through PATH.
    program: PathBuf,
    /// Write end of the pipe the child waits on.
    go: Option<OwnedFd>,
    /// Read end of the pipe through which the child reports a failed exec (errno).
    exec_error: Option<OwnedFd>,
    exit: ProcessExit,
    reaped: Option<ExitStatus>,
}

impl LaunchedCommand {
    /// Forks a child that will exec `argv` once released, with this process's environment plus
    /// `env`.
    pub fn spawn(argv: &[OsString], env: &[(OsString, OsString)]) -> Result<Self, RecordError> {
        let display: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let spawn_err = |source: io::Error| RecordError::Spawn { command: display.join(" "), source };
        let Some(program) = argv.first() else {
            return Err(spawn_err(io::Error::new(io::ErrorKind::InvalidInput, "empty command")));
        };
        let path = resolve_program(program)
            .ok_or_else(|| spawn_err(io::Error::new(io::ErrorKind::NotFound, "command not found in PATH")))?;
        // Everything the child touches is prepared before fork: after fork only
        // async-signal-safe calls are allowed (the recorder is multi-threaded).
        let c_path = cstring(path.as_os_str()).map_err(spawn_err)?;
        let c_args: Vec<CString> =
            argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>().map_err(spawn_err)?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());
        let mut vars: Vec<(OsString, OsString)> =
            std::env::vars_os().filter(|(k, _)| !env.iter().any(|(e, _)| e == k)).collect();
        vars.extend(env.iter().cloned());
        let c_env: Vec<CString> = vars
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<Result<_, _>>()
            .map_err(spawn_err)?;
        let mut c_envp: Vec<*const libc::c_char> = c_env.iter().map(|a| a.as_ptr()).collect();
        c_envp.push(std::ptr::null());
        let (go_read, go_write) = pipe().map_err(spawn_err)?;
        let (err_read, err_write) = pipe().map_err(spawn_err)?;

        // SAFETY: fork(2); the child only calls async-signal-safe functions (close, read,
        // execve, write, _exit) on data prepared above.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(spawn_err(io::Error::last_os_error()));
        }
        if pid == 0 {
            unsafe {
                libc::close(go_write.as_raw_fd());
                libc::close(err_read.as_raw_fd());
                let mut byte = 0u8;
                let n = loop {
                    let n = libc::read(go_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                    if n >= 0 || *libc::__errno_location() != libc::EINTR {
                        break n;
                    }
                };
                if n != 1 {
                    // The recorder gave up (probes failed to attach): never run untraced.
                    libc::_exit(127);
                }
                libc::execve(c_path.as_ptr(), c_argv.as_ptr(), c_envp.as_ptr());
                let errno = *libc::__errno_location();
                libc::write(err_write.as_raw_fd(), (&errno as *const i32).cast(), 4);
                libc::_exit(127);
            }
        }
        drop(go_read);
        drop(err_write);
        let pid = pid as u32;
        let exit = ProcessExit::watch(pid).map_err(spawn_err)?;
        Ok(LaunchedCommand {
            pid,
            argv: display,
            program: path,
            go: Some(go_write),
            exec_error: Some(err_read),
            exit,
            reaped: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The executable the child will run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Waits (at most `limit`) until the child sleeps in its wait for [`Self::release`], and
    /// says whether it does: from then until the release it is certainly off CPU, which lets the
    /// trace start with its state known.
    pub fn wait_until_parked(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let stat = format!("/proc/{}/stat", self.pid);
        loop {
            // Field 3, after the parenthesised command name: S = interruptible sleep.
            let state = std::fs::read_to_string(&stat).ok().and_then(|s| {
                s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
            });
            if state.as_deref() == Some("S") {
                return true;
            }
            if state.is_none() || std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Lets the child exec. Fails if the exec itself failed.
    pub fn release(&mut self) -> Result<(), RecordError> {
        let spawn_err = |source: io::Error| RecordError::Spawn { command: self.argv.join(" "), source };
        let Some(go) = self.go.take() else { return Ok(()) };
        write_all(go.as_raw_fd(), &[1]).map_err(spawn_err)?;
        drop(go);
        // The error pipe closes on a successful exec (CLOEXEC) or carries the errno.
        if let Some(err) = self.exec_error.take() {
            let mut buf = [0u8; 4];
            let n = read_full(err.as_raw_fd(), &mut buf).map_err(spawn_err)?;
            if n == 4 {
                return Err(spawn_err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf))));
            }
        }
        Ok(())
    }

    /// Waits until the child exits and reaps it.
    pub async fn wait(&mut self) -> Result<ExitStatus, RecordError> {
        if let Some(s) = self.reaped {
            return Ok(s);
        }
        self.exit
            .exited()
            .await
            .map_err(|source| RecordError::Spawn { command: self.argv.join(" "), source })?;
        let status =
            reap(self.pid).map_err(|source| RecordError::Spawn { command: self.argv.join(" "), source })?;
        self.reaped = Some(status);
        Ok(status)
    }

    /// Sends `signal` to the child, if it has not been reaped.
    pub fn signal(&self, signal: i32) {
        if self.reaped.is_none() {
            // SAFETY: kill(2) on our own unreaped child: the pid cannot have been reused.
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }
}

impl Drop for LaunchedCommand {
    fn drop(&mut self) {
        if self.go.is_some() {
            // Never released: the child is still waiting before exec. Closing the pipe makes it
            // exit without running the command; reap it.
            self.go = None;
            let _ = reap(self.pid);
        }
    }
}

/// Becomes ready when a process exits (a pidfd).
pub struct ProcessExit {
    fd: AsyncFd<OwnedFd>,
}

impl ProcessExit {
    pub fn watch(pid: u32) -> io::Result<Self> {
        // SAFETY: pidfd_open(2) returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: the OwnedFd stays open and unchanged while the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(ProcessExit { fd })
    }

    /// Resolves once the process has exited (it stays resolved).
    pub async fn exited(&self) -> io::Result<()> {
        let _guard = self.fd.readable().await?;
        Ok(())
    }
}

/// Checks that a process exists.
pub fn process_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).is_dir()
}

fn reap(pid: u32) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) on our own child.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    })
}

fn resolve_program(program: &OsStr) -> Option<PathBuf> {
    let p = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return p.exists().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(p)).find(|c| {
        c.metadata()
            .map(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
            .unwrap_or(false)
    })
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2(2) fills two fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn write_all(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writing from a live buffer.
        let n = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

fn read_full(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: reading into a live buffer.
        let n = unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}
