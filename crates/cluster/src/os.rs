//! The process calls std lacks, for the cluster and for pgrelay's tests and benchmarks: sending a
//! signal to a child (a graceful stop is SIGTERM, which `Child::kill` cannot send) and asking
//! whether we are root. Their `unsafe` lives here and nowhere else.

use std::io;

/// Sends `signal` (`libc::SIGTERM`, …) to the process `pid`, which must be a child of ours that
/// has not been reaped: an unreaped child's pid cannot be reused by another process.
#[allow(unsafe_code)]
pub fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to every process of the process group `group`.
#[allow(unsafe_code)]
pub fn signal_group(group: u32, signal: libc::c_int) -> io::Result<()> {
    let group = libc::pid_t::try_from(group).map_err(io::Error::other)?;
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a group.
    if unsafe { libc::kill(-group, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process runs as root (initdb and postgres refuse to).
#[allow(unsafe_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
