//! The store's commits through sled as Sluice builds it (vendor/sled/PATCHES.md): batches from
//! several threads never wait on each other forever, a batch reads back whole or not at all
//! after a reopen and after the writer was killed in the middle of one, and a batch that has to
//! read evicted pages back from the log commits.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::open_db;

/// Keys per batch, and the bytes of each value: a batch (800 KiB) is larger than one of sled's
/// IO buffers, so buffers fill up and are sealed while the batch is still open.
const KEYS: usize = 100;
const VALUE_BYTES: usize = 8 * 1024;

fn batch(prefix: &str, number: u64) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for k in 0..KEYS {
        let mut value = number.to_string().into_bytes();
        value.resize(VALUE_BYTES, b' ');
        batch.insert(format!("{prefix}/{k:03}").into_bytes(), value);
    }
    batch
}

/// The batch number every key under `prefix` holds; panics when they differ (a torn batch).
fn whole_batch(db: &sled::Db, prefix: &str) -> Option<u64> {
    let numbers: Vec<u64> = db
        .scan_prefix(format!("{prefix}/").as_bytes())
        .map(|entry| {
            let (_, value) = entry.unwrap();
            String::from_utf8_lossy(&value).trim().parse().unwrap()
        })
        .collect();
    if numbers.is_empty() {
        return None;
    }
    assert_eq!(numbers.len(), KEYS, "{prefix}: a batch is missing keys");
    assert!(
        numbers.iter().all(|n| *n == numbers[0]),
        "{prefix}: keys from different batches: {numbers:?}"
    );
    Some(numbers[0])
}

fn open_again(dir: &Path) -> sled::Db {
    // sled lets go of its file lock when its last thread has ended, a moment after the drop.
    for _ in 0..200 {
        match open_db(dir) {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    open_db(dir).unwrap()
}

#[test]
fn batches_committed_from_several_threads_read_back_whole_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    // Flushes and reads that are not part of any batch, meanwhile.
    let bystander = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                db.flush().unwrap();
                let _ = db.get(b"w0/000").unwrap();
            }
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                for number in 1..=25 {
                    db.apply_batch(batch(&format!("w{w}"), number)).unwrap();
                    db.flush().unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    bystander.join().unwrap();
    drop(db);

    let db = open_again(dir.path());
    for w in 0..4 {
        assert_eq!(whole_batch(&db, &format!("w{w}")), Some(25));
    }
}

/// The child's side: set to the store's folder, this test writes batches until it is killed.
const WRITER_DIR: &str = "SLUICE_TEST_BATCH_WRITER_DIR";

#[test]
fn a_writer_killed_in_the_middle_of_batches_leaves_each_whole_and_keeps_every_flushed_one() {
    if let Ok(dir) = std::env::var(WRITER_DIR) {
        // The child: batch after batch, each flushed, then said on stdout.
        let db = open_db(Path::new(&dir)).unwrap();
        let first = whole_batch(&db, "k").unwrap_or(0) + 1;
        for number in first.. {
            db.apply_batch(batch("k", number)).unwrap();
            db.flush().unwrap();
            println!("flushed {number}");
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut last_flushed = 0;
    // Killed three times, at different points of its stream of batches.
    for (round, after) in [7, 13, 29].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "store::batch_tests::a_writer_killed_in_the_middle_of_batches_leaves_each_whole_and_keeps_every_flushed_one",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(number) = line.strip_prefix("flushed ") {
                last_flushed = number.parse().unwrap();
                seen += 1;
                if seen == after {
                    break;
                }
            }
        }
        assert_eq!(seen, after, "round {round}: the writer stopped early");
        child.kill().unwrap(); // SIGKILL, in the middle of the next batch or its flush.
        child.wait().unwrap();

        let db = open_again(dir.path());
        let found = whole_batch(&db, "k").expect("every flushed batch is gone");
        assert!(
            found >= last_flushed,
            "round {round}: batch {last_flushed} was flushed, the store holds {found}"
        );
    }
}

/// Batches over a store larger than its page cache (16 MiB): inside a batch sled evicts pages
/// and reads them back from its log, which waits until the fragments it reads are on disk. sled
/// keeps the batch's manifest in an IO buffer of its own so that a fragment the batch wrote can
/// be written while the batch is open; with the manifest in the items' buffer (tried, see
/// vendor/sled/PATCHES.md) this test waited forever, as a scheduler did under a fan-out.
#[test]
fn batches_over_a_store_larger_than_the_page_cache_commit() {
    // A deadlock fails the test (after minutes; it takes seconds) instead of hanging the suite.
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        commit_over_a_store_larger_than_the_cache();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(300)) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("a commit waited forever for its own writes (a deadlock in sled's batches)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the committing thread failed"),
    }
}

fn commit_over_a_store_larger_than_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    let keys = 8192;
    // 32 MiB against a 16 MiB cache, in flushed batches of 1 MiB.
    for chunk in 0..keys / 256 {
        let mut load = sled::Batch::default();
        for k in chunk * 256..(chunk + 1) * 256 {
            load.insert(format!("big/{k:05}").into_bytes(), vec![b'x'; 4096]);
        }
        db.apply_batch(load).unwrap();
        db.flush().unwrap();
    }
    // Each batch updates keys all over the store, two on each page it touches.
    for round in 0..40u32 {
        let mut update = sled::Batch::default();
        for k in (0..keys).step_by(16) {
            let k = (k + round as usize) % keys;
            for key in [k, (k + 1) % keys] {
                let value =
                    vec![b'a' + (round % 26) as u8; 1000 + (key * 7 + round as usize) % 6000];
                update.insert(format!("big/{key:05}").into_bytes(), value);
            }
        }
        db.apply_batch(update).unwrap();
        db.flush().unwrap();
    }
    drop(db);
    let db = open_again(dir.path());
    assert_eq!(db.scan_prefix(b"big/").count(), keys);
    let last = b'a' + (39 % 26) as u8;
    for k in (0..keys).step_by(16) {
        let key = format!("big/{:05}", (k + 39) % keys);
        assert_eq!(db.get(key.as_bytes()).unwrap().unwrap()[0], last, "{key}");
    }
}
