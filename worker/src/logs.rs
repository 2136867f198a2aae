//! Copying a step's output to disk as it comes, with secret values masked.
//!
//! Output is streamed through a fixed-size buffer, so a step that prints a gigabyte costs the
//! worker the same memory as one that prints a line. A write error (a full disk) ends the copy
//! with an error that the executor turns into a failed attempt.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// What replaces a secret's value in logs.
pub const MASK: &[u8] = b"***";

const CHUNK: usize = 64 * 1024;

/// Replaces secret values in a byte stream, even when a value is split across reads.
#[derive(Debug, Default)]
pub struct Masker {
    secrets: Vec<Vec<u8>>,
    longest: usize,
    pending: Vec<u8>,
}

impl Masker {
    /// A masker for these values; empty values are ignored (they would match everywhere).
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(String::into_bytes)
            .collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let longest = secrets.first().map_or(0, Vec::len);
        Masker {
            secrets,
            longest,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes in; returns what can be written now. A tail that could be the start of a
    /// secret is held back until more bytes (or the end) arrive.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return bytes.to_vec();
        }
        self.pending.extend_from_slice(bytes);
        self.drain(false)
    }

    /// Everything still held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, at_end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending.len());
        let mut start = 0;
        let hold_from = loop {
            let found = self
                .secrets
                .iter()
                .filter_map(|s| find(&self.pending[start..], s).map(|at| (start + at, s.len())))
                .min_by_key(|(at, len)| (*at, std::cmp::Reverse(*len)));
            match found {
                // Mask only once a longer secret starting at the same place has had its chance.
                Some((at, len)) if at_end || at + self.longest <= self.pending.len() => {
                    out.extend_from_slice(&self.pending[start..at]);
                    out.extend_from_slice(MASK);
                    start = at + len;
                }
                // A longer secret may begin before this match and still be arriving: hold back
                // everything it could cover.
                Some((at, _)) => {
                    break at
                        .min(self.pending.len().saturating_sub(self.longest - 1))
                        .max(start)
                }
                None if at_end => break self.pending.len(),
                None => break start.max(self.pending.len().saturating_sub(self.longest - 1)),
            }
        };
        out.extend_from_slice(&self.pending[start..hold_from]);
        self.pending.drain(..hold_from);
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Copies `reader` into `file`, masking secrets; returns the bytes written.
///
/// The file is not fsynced: what was written survives the worker being killed (it is in the
/// page cache), and syncing every step's log would cost more than a short step itself.
pub async fn capture(
    mut reader: impl AsyncRead + Unpin,
    file: tokio::fs::File,
    mut masker: Masker,
) -> io::Result<u64> {
    // No write buffer: each read is written at once, so a followed log shows a line when the
    // step prints it (reads are already up to CHUNK bytes, so a loud step costs few writes).
    let mut writer = file;
    let mut buffer = vec![0u8; CHUNK];
    let mut written = 0u64;
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        let masked = masker.feed(&buffer[..n]);
        writer.write_all(&masked).await?;
        written += masked.len() as u64;
    }
    let rest = masker.finish();
    writer.write_all(&rest).await?;
    written += rest.len() as u64;
    writer.flush().await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_in_pieces(secrets: &[&str], input: &str, piece: usize) -> String {
        let mut m = Masker::new(secrets.iter().map(|s| s.to_string()));
        let mut out = Vec::new();
        for chunk in input.as_bytes().chunks(piece) {
            out.extend(m.feed(chunk));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_secrets_split_across_reads() {
        let input = "token=hunter2 and again hunter2!";
        for piece in 1..input.len() {
            assert_eq!(
                mask_in_pieces(&["hunter2"], input, piece),
                "token=*** and again ***!",
                "piece size {piece}"
            );
        }
    }

    #[test]
    fn the_longer_of_overlapping_secrets_wins() {
        assert_eq!(
            mask_in_pieces(&["abc", "abcdef"], "xabcdefx abc", 3),
            "x***x ***"
        );
    }

    #[test]
    fn a_secret_containing_another_is_masked_whole() {
        let url = "postgres://admin:hunter2@db:5432/prod";
        let input = format!("url={url} pass=hunter2\n");
        for piece in 1..input.len() {
            assert_eq!(
                mask_in_pieces(&[url, "hunter2"], &input, piece),
                "url=*** pass=***\n",
                "piece size {piece}"
            );
        }
    }

    #[test]
    fn without_secrets_bytes_pass_through() {
        assert_eq!(mask_in_pieces(&[""], "plain", 2), "plain");
    }

    #[tokio::test]
    async fn a_full_disk_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let data = vec![b'x'; 200_000];
        let file = tokio::fs::File::create(&path).await.unwrap();
        let err = capture(&data[..], file, Masker::new(Vec::new()))
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }
}
