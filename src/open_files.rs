//! The process's open-files limit. Every stream is a socket, and services often start with a
//! soft limit of 1,024: past it `accept` fails while valid clients wait. The relay raises its
//! own limit at start; the benchmarks and tests that open thousands of sockets do the same.

use std::io;

/// Raises the soft open-files limit toward `wanted` (`u64::MAX`: as far as allowed), lifting
/// the hard limit too when the process may (root, up to the kernel's `nr_open`), else up to the
/// hard limit. Returns the soft limit now in force.
#[allow(unsafe_code)] // getrlimit and setrlimit: std has no wrapper for them
pub fn raise_limit(wanted: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    let lifted = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max.max(wanted),
    };
    let most = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    for attempt in [lifted, most] {
        // SAFETY: setrlimit only reads the struct passed to it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &attempt) } == 0 {
            return Ok(attempt.rlim_cur);
        }
    }
    Err(io::Error::last_os_error())
}
