//! The shared rayon pools. Built lazily on first use, one per requested
//! thread count (never one per call), and rebuilt in a forked child, where the
//! parent's worker threads do not exist (rayon would deadlock there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::ThreadPool;

struct Pools {
    pid: u32,
    /// (thread name prefix, threads) -> pool.
    by_threads: HashMap<(&'static str, usize), Arc<ThreadPool>>,
}

/// Upper bound on a pool's size.
pub const MAX_THREADS: usize = 256;

static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();

/// Number of threads used when the caller does not say: the machine's cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The pool for `num_threads` workers (`None` = all cores).
pub fn pool(num_threads: Option<usize>) -> Arc<ThreadPool> {
    // More threads than a few per core only adds contention (and a typo like
    // 1000 would start 1000 threads): cap it.
    named_pool("hpd-encode", num_threads.filter(|&n| n > 0).unwrap_or_else(default_threads).min(MAX_THREADS))
}

/// The part writers' pool: two threads that encode the two latent columns of
/// the rows a writer receives side by side. Apart from [`pool`], so that a
/// writer never waits behind the decode work queued there.
pub fn writer_pool() -> Arc<ThreadPool> {
    named_pool("hpd-encode-writer", 2)
}

fn named_pool(name: &'static str, n: usize) -> Arc<ThreadPool> {
    let pools = POOLS.get_or_init(|| Mutex::new(Pools { pid: std::process::id(), by_threads: HashMap::new() }));
    let mut guard = pools.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if guard.pid != pid {
        // A fork copied the map but not the worker threads: forget the old
        // pools without running their destructors (they would wait forever).
        let old = std::mem::take(&mut guard.by_threads);
        std::mem::forget(old);
        guard.pid = pid;
    }
    guard
        .by_threads
        .entry((name, n))
        .or_insert_with(|| {
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(move |i| format!("{name}-{i}"))
                    .build()
                    .expect("cannot start the rayon thread pool"),
            )
        })
        .clone()
}

/// Memory this machine has (RAM plus swap), in bytes; `u64::MAX` where it
/// cannot be told. A single allocation larger than that cannot succeed (and
/// Rust's allocator aborts the process on failure), so such requests are
/// refused up front as errors.
pub fn machine_memory() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysinfo fills the struct it is given.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        if unsafe { libc::sysinfo(&mut info) } == 0 {
            let unit = u64::from(info.mem_unit.max(1));
            return (info.totalram as u64).saturating_add(info.totalswap as u64).saturating_mul(unit);
        }
    }
    u64::MAX
}

/// Memory available now for a new allocation, in bytes (`u64::MAX` where it
/// cannot be told). The rule: `MemAvailable` of `/proc/meminfo` (the kernel's
/// estimate of what can be allocated without swapping), and, when this
/// process's cgroup limits memory (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), no more than that limit less the cgroup's usage.
/// Swap is not counted: a batch that fits only in swap would thrash.
///
/// [`machine_memory`] bounds what can ever succeed; this bounds what should be
/// asked for now. An allocation between the two succeeds on paper (the kernel
/// overcommits) and then, page by page, pushes the machine into the OOM
/// killer.
pub fn available_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()?.checked_mul(1024)
    });
    meminfo.unwrap_or(u64::MAX).min(cgroup_room().unwrap_or(u64::MAX))
}

/// The memory limit of this process's cgroup less its usage, when one is set.
fn cgroup_room() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut room: Option<u64> = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let dir = path.trim_start_matches('/');
        let (limit, usage) = if controllers.is_empty() {
            // v2: "max" when unlimited (not a number: no limit)
            (format!("/sys/fs/cgroup/{dir}/memory.max"), format!("/sys/fs/cgroup/{dir}/memory.current"))
        } else if controllers.split(',').any(|c| c == "memory") {
            let base = format!("/sys/fs/cgroup/memory/{dir}");
            (format!("{base}/memory.limit_in_bytes"), format!("{base}/memory.usage_in_bytes"))
        } else {
            continue;
        };
        if let Some(limit) = read(&limit) {
            let left = limit.saturating_sub(read(&usage).unwrap_or(0));
            room = Some(room.map_or(left, |r| r.min(left)));
        }
    }
    room
}
