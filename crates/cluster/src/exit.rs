//! Stopping clusters kept in statics when the process exits.

use super::*;

/// Clusters handed to [`stop_at_exit`]; the exit hook drops them.
pub(crate) static EXIT_CLUSTERS: Mutex<Vec<TempCluster>> = Mutex::new(Vec::new());

/// Registers a process-exit hook (`atexit`) that stops the cluster and removes its folder; for
/// clusters kept in statics, which are never dropped.
///
/// Test binaries typically start one shared cluster, keep its URL in a static and hand the cluster
/// itself to this function. The hook runs when the process exits normally (as test binaries do,
/// pass or fail); nothing runs if the process is killed by a signal.
#[allow(unsafe_code)] // atexit: std has no exit hook, and statics are never dropped
pub fn stop_at_exit(cluster: TempCluster) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the hook is a plain `extern "C" fn` that catches nothing and cannot unwind
        // (a panic in it would abort, as for any `extern "C" fn`).
        if unsafe { libc::atexit(stop_exit_clusters) } != 0 {
            tracing::warn!(
                "could not register an exit hook; shared clusters will outlive the process"
            );
        }
    });
    EXIT_CLUSTERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(cluster);
}

extern "C" fn stop_exit_clusters() {
    let clusters =
        std::mem::take(&mut *EXIT_CLUSTERS.lock().unwrap_or_else(PoisonError::into_inner));
    // Dropping each cluster stops its server and removes its folder.
    drop(clusters);
}
