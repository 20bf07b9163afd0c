//! Processes: stopping a postmaster step by step, and running the server as `postgres` when
//! we are root.

use super::*;

/// An escalating stop of a postmaster, shared by the async [`TempCluster::stop`] and the blocking
/// `Drop`, which differ only in how they wait between polls.
pub(crate) struct Shutdown {
    /// Index into [`STOP_SIGNALS`] of the signal to send when `deadline` passes.
    pub(crate) next_signal: usize,
    pub(crate) deadline: Instant,
}

impl Shutdown {
    pub(crate) fn new() -> Shutdown {
        // A deadline that has already passed makes the first poll send the first signal.
        Shutdown {
            next_signal: 0,
            deadline: Instant::now(),
        }
    }

    /// Returns the exit status once the postmaster has exited; until then sends it the next signal
    /// whenever the current one's grace period is over.
    pub(crate) fn poll(&mut self, postmaster: &mut Child) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = postmaster.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= self.deadline {
            let (signal, grace) = STOP_SIGNALS[self.next_signal.min(STOP_SIGNALS.len() - 1)];
            if self.next_signal > 0 {
                tracing::warn!(
                    pid = postmaster.id(),
                    signal,
                    "PostgreSQL is slow to stop; sending a harsher signal"
                );
            }
            // The pid is still ours: try_wait has just seen the child unreaped.
            os::signal(postmaster.id(), signal)?;
            self.next_signal += 1;
            self.deadline = Instant::now() + grace;
        }
        Ok(None)
    }
}

/// Kills a process group when dropped, unless its id has been taken out first.
pub(crate) struct KillGroupOnDrop(pub(crate) Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = os::signal_group(group, libc::SIGKILL);
        }
    }
}

/// The OS account that runs the server binaries when that cannot be us.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerUser {
    pub(crate) uid: libc::uid_t,
    pub(crate) gid: libc::gid_t,
}

impl ServerUser {
    /// `None` unless we are root. initdb and postgres refuse to run as root (a compromised server
    /// would own the machine), so root hands them to the `postgres` account that packages create.
    #[allow(unsafe_code)] // getpwnam_r: std cannot look up an account
    pub(crate) fn for_this_process() -> Result<Option<ServerUser>, ClusterError> {
        if !os::is_root() {
            return Ok(None);
        }
        // getpwnam_r rather than getpwnam: tests start clusters from several threads at once.
        // SAFETY: `passwd` is plain integers and pointers, for which all zeroes is a valid value.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0; 16 * 1024];
        let mut found = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call, and the buffer's true
        // length is passed along with it.
        let code = unsafe {
            libc::getpwnam_r(
                c"postgres".as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        if code != 0 {
            return Err(ClusterError::Io {
                action: "look up the postgres OS user".to_owned(),
                source: io::Error::from_raw_os_error(code),
            });
        }
        if found.is_null() {
            return Err(ClusterError::NoServerUser);
        }
        Ok(Some(ServerUser {
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }))
    }
}
