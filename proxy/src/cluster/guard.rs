//! Crash guards: a child process (`tandem guard-…`) started with a pipe from this
//! process, which undoes what this process set up (VIPs on interfaces, anycast routes)
//! the moment the pipe closes — when this process ends, however it ends (kill -9 and
//! crashes included).

use std::sync::Mutex;

/// The write ends of the guards' pipes, held for the life of the process.
static PIPES: Mutex<Vec<std::process::ChildStdin>> = Mutex::new(Vec::new());

/// Starts `tandem ARGS` as a guard holding the read end of a pipe from this process.
pub fn start(args: &[std::ffi::OsString]) -> std::io::Result<()> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no pipe to the guard"))?;
    PIPES.lock().unwrap_or_else(|e| e.into_inner()).push(pipe);
    // Reaped when it ends (it outlives this process only by the moment its work takes).
    std::thread::Builder::new()
        .name("guard-reaper".into())
        .spawn(move || child.wait())?;
    Ok(())
}

/// The guard's side: ignores the signals that stop the proxy (a terminal's Ctrl-C
/// reaches the whole process group) and returns once standard input closes, that is
/// once the proxy ended; the guard then does its work and exits.
pub fn wait_for_parent_exit() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to "ignore" touches no memory.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut buf = [0u8; 64];
    loop {
        match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
