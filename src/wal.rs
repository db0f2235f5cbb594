//! The write-ahead log of `--wal-dir`: every accepted OTLP request is
//! appended (as protobuf) and made durable before it is acknowledged.
//!
//! - **Group commit**: one writer task takes every record that is waiting,
//!   writes them, calls `fsync` once, and then acknowledges them all.
//! - **Records**: `[length u32 LE][crc32 u32 LE][bytes]`. A torn record at
//!   the tail (a crash in the middle of a write) fails its checksum and is
//!   dropped on replay: it was never acknowledged.
//! - **Segments and checkpoints**: the log is a series of segment files
//!   `wal-<n>.log`. A checkpoint starts a new segment, writes the engine's
//!   state to `checkpoint.json` (atomically, by rename) marked as covering the
//!   older segments, then deletes them. Replaying a record twice is harmless
//!   (joining is idempotent), so appends racing a checkpoint are safe.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::live::EngineSnapshot;

/// What a restart recovers.
pub struct Recovery {
    pub snapshot: Option<EngineSnapshot>,
    /// Records logged after the snapshot, in order.
    pub records: Vec<Vec<u8>>,
    /// Records dropped for a bad checksum (a torn tail).
    pub torn: u64,
}

/// The layout of the engine's state in `checkpoint.json`, raised when it
/// changes shape (a checkpoint without it is format 1).
const CHECKPOINT_FORMAT: u32 = 2;

fn format_1() -> u32 {
    1
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    #[serde(default = "format_1")]
    format: u32,
    /// The snapshot includes every segment numbered up to this.
    covers: u64,
    engine: EngineSnapshot,
}

enum Msg {
    Append(Bytes, oneshot::Sender<io::Result<()>>),
    /// Start a new segment; answers the number of the last closed one.
    Rotate(oneshot::Sender<io::Result<u64>>),
}

/// Handle to the log.
#[derive(Clone)]
pub struct Wal {
    dir: PathBuf,
    tx: mpsc::Sender<Msg>,
}

fn segment(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("wal-{n:020}.log"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("wal-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn read_records(path: &Path, out: &mut Vec<Vec<u8>>, torn: &mut u64) -> io::Result<()> {
    let mut r = BufReader::new(File::open(path)?);
    loop {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let mut buf = vec![0u8; len];
        if r.read_exact(&mut buf).is_err() || crc32fast::hash(&buf) != crc {
            // A torn tail: nothing after it was written completely.
            *torn += 1;
            return Ok(());
        }
        out.push(buf);
    }
}

/// Writes `batch` as records, each header beside its bytes in one
/// vectored write (the records are not copied into one buffer first), and
/// makes them durable.
fn write_records(file: &mut File, batch: &[Bytes]) -> io::Result<()> {
    let heads = batch
        .iter()
        .map(|rec| {
            let len = u32::try_from(rec.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record over 4 GiB"))?;
            let mut head = [0u8; 8];
            head[..4].copy_from_slice(&len.to_le_bytes());
            head[4..].copy_from_slice(&crc32fast::hash(rec).to_le_bytes());
            Ok(head)
        })
        .collect::<io::Result<Vec<[u8; 8]>>>()?;
    let mut slices: Vec<IoSlice<'_>> = heads
        .iter()
        .zip(batch)
        .flat_map(|(head, rec)| [IoSlice::new(head), IoSlice::new(rec)])
        .collect();
    // A write takes what it can (at most the system's limit of slices).
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    file.sync_data()
}

impl Wal {
    /// Opens (or creates) the log in `dir` and reads what it holds.
    ///
    /// # Errors
    /// When the directory or its files cannot be read or written, or the
    /// checkpoint cannot be parsed.
    pub fn open(dir: &Path) -> io::Result<(Wal, Recovery)> {
        std::fs::create_dir_all(dir)?;
        let cp_path = dir.join("checkpoint.json");
        let (covers, snapshot) = match File::open(&cp_path) {
            Ok(f) => {
                let invalid = |e: String| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", cp_path.display()),
                    )
                };
                let cp: Checkpoint = serde_json::from_reader(BufReader::new(f))
                    .map_err(|e| invalid(e.to_string()))?;
                if cp.format != CHECKPOINT_FORMAT {
                    return Err(invalid(format!(
                        "checkpoint format {}, this tpsgap reads format {CHECKPOINT_FORMAT}: \
                         finish its runs with the tpsgap that wrote it, or move the directory away",
                        cp.format
                    )));
                }
                (Some(cp.covers), Some(cp.engine))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        let mut torn = 0;
        let segs = segments(dir)?;
        for &n in &segs {
            if covers.is_some_and(|c| n <= c) {
                continue;
            }
            read_records(&segment(dir, n), &mut records, &mut torn)?;
        }
        // Appends go to a fresh segment, after everything replayed.
        let next = segs
            .last()
            .map_or(0, |n| n + 1)
            .max(covers.map_or(0, |c| c + 1));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment(dir, next))?;
        let (tx, rx) = mpsc::channel(4096);
        let d = dir.to_path_buf();
        std::thread::Builder::new()
            .name("tpsgap-wal".into())
            .spawn(move || writer(d, next, file, rx))?;
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                tx,
            },
            Recovery {
                snapshot,
                records,
                torn,
            },
        ))
    }

    /// Appends a record and waits until it is durable.
    ///
    /// # Errors
    /// When writing or syncing fails, or the writer has stopped.
    pub async fn append(&self, rec: Bytes) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Append(rec, tx))
            .await
            .map_err(|_| io::Error::other("write-ahead log stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("write-ahead log stopped"))?
    }

    /// Writes a checkpoint of `snapshot()` (taken after a new segment has
    /// started) and deletes the segments it covers.
    ///
    /// # Errors
    /// When rotating, writing or deleting fails.
    pub async fn checkpoint(&self, snapshot: impl FnOnce() -> EngineSnapshot) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Rotate(tx))
            .await
            .map_err(|_| io::Error::other("write-ahead log stopped"))?;
        let covers = rx
            .await
            .map_err(|_| io::Error::other("write-ahead log stopped"))??;
        let cp = Checkpoint {
            format: CHECKPOINT_FORMAT,
            covers,
            engine: snapshot(),
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let tmp = dir.join("checkpoint.json.tmp");
            let mut f = io::BufWriter::new(File::create(&tmp)?);
            serde_json::to_writer(&mut f, &cp).map_err(io::Error::other)?;
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join("checkpoint.json"))?;
            File::open(&dir)?.sync_all()?;
            for n in segments(&dir)? {
                if n <= covers {
                    std::fs::remove_file(segment(&dir, n))?;
                }
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// The writer thread: group commit.
fn writer(dir: PathBuf, mut seq: u64, mut file: File, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<Bytes> = Vec::new();
    let mut acks: Vec<oneshot::Sender<io::Result<()>>> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut pending = vec![first];
        while let Ok(m) = rx.try_recv() {
            pending.push(m);
        }
        for m in pending {
            match m {
                Msg::Append(rec, ack) => {
                    batch.push(rec);
                    acks.push(ack);
                }
                Msg::Rotate(ack) => {
                    // What came before the rotation goes to the old segment.
                    let res = flush(&mut file, &mut batch, &mut acks).and_then(|()| {
                        let next = OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(segment(&dir, seq + 1))?;
                        file = next;
                        seq += 1;
                        Ok(seq - 1)
                    });
                    let _ = ack.send(res);
                }
            }
        }
        let _ = flush(&mut file, &mut batch, &mut acks);
    }
}

fn flush(
    file: &mut File,
    batch: &mut Vec<Bytes>,
    acks: &mut Vec<oneshot::Sender<io::Result<()>>>,
) -> io::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let res = write_records(file, batch);
    for ack in acks.drain(..) {
        let _ = ack.send(match &res {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
    batch.clear();
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = std::env::temp_dir().join(format!("tpsgap-wal-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (wal, rec) = Wal::open(&dir).unwrap();
            assert!(rec.records.is_empty() && rec.snapshot.is_none());
            for i in 0..5u8 {
                wal.append(vec![i; 100 + usize::from(i)].into())
                    .await
                    .unwrap();
            }
        }
        // A torn record at the tail.
        let seg = segment(&dir, 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let (wal, rec) = Wal::open(&dir).unwrap();
        assert_eq!(rec.records.len(), 5);
        assert_eq!(rec.records[3], vec![3u8; 103]);
        assert_eq!(rec.torn, 1);
        wal.append(vec![7; 10].into()).await.unwrap();
        // A checkpoint covers everything logged so far.
        wal.checkpoint(EngineSnapshot::empty).await.unwrap();
        wal.append(vec![8; 10].into()).await.unwrap();
        drop(wal);
        let (_, rec) = Wal::open(&dir).unwrap();
        assert!(rec.snapshot.is_some());
        assert_eq!(rec.records, vec![vec![8u8; 10]]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_group_of_more_records_than_one_write_takes_is_written_whole() {
        // 1,500 records are 3,000 slices, more than one vectored write
        // takes (the system's limit is 1,024), of sizes around a page.
        let path = std::env::temp_dir().join(format!("tpsgap-wal-group-{}", std::process::id()));
        let batch: Vec<Bytes> = (0..1500u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 4000 + (i as usize * 7) % 300]))
            .collect();
        let mut f = File::create(&path).unwrap();
        write_records(&mut f, &batch).unwrap();
        drop(f);
        let (mut back, mut torn) = (Vec::new(), 0);
        read_records(&path, &mut back, &mut torn).unwrap();
        assert_eq!(torn, 0);
        assert_eq!(back.len(), 1500);
        assert!(back.iter().zip(&batch).all(|(b, r)| b[..] == r[..]));
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn a_checkpoint_of_another_format_is_refused_with_its_format() {
        let dir = std::env::temp_dir().join(format!("tpsgap-wal-format-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // As the first format wrote it: no `format` field.
        let empty = serde_json::to_string(&EngineSnapshot::empty()).unwrap();
        std::fs::write(
            dir.join("checkpoint.json"),
            format!("{{\"covers\":0,\"engine\":{empty}}}"),
        )
        .unwrap();
        let err = Wal::open(&dir).err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .contains("checkpoint format 1, this tpsgap reads format 2"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
