pub mod base;
pub mod centralized;
pub mod ring;
pub mod sync;
pub mod tree;
pub mod worker;

/// t1-train patch (burn issue #4549): the first transfer id of the next global ring all-reduce.
/// Upstream numbers each call's transfers from 0, so a second call's transfers collide with the
/// first's and hang; each call now takes ids from its own block of 2^32. (Tree and centralized,
/// which use the fixed ids 0 and 1, are left as they are: t1-train runs the ring.)
pub(crate) fn next_transfer_base() -> u64 {
    static NEXT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, core::sync::atomic::Ordering::SeqCst) << 32
}
