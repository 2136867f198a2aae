//! Every file of the parser corpus is either valid or refused with diagnostics inside the file;
//! none makes the parser panic, hang or overflow its stack.

use std::path::Path;

use sluice::spec::{load_file, DEFAULT_MAX_FILE_BYTES};

#[test]
fn every_corpus_file_is_accepted_or_explained() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus is there");
    for path in files {
        let lines = std::fs::read(&path)
            .unwrap()
            .split(|b| *b == b'\n' || *b == b'\r')
            .count();
        match load_file(&path, DEFAULT_MAX_FILE_BYTES) {
            Ok(_) => {}
            Err(diags) => {
                assert!(
                    !diags.is_empty(),
                    "{}: refused without a reason",
                    path.display()
                );
                for d in &diags {
                    assert!(
                        d.line >= 1 && d.line <= lines.max(1),
                        "{}: diagnostic outside the file: {d}",
                        path.display()
                    );
                    assert!(!d.message.is_empty());
                }
            }
        }
    }
}

#[test]
fn known_corpus_verdicts_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let load = |name: &str| load_file(&dir.join(name), DEFAULT_MAX_FILE_BYTES);
    assert!(load("crlf.yaml").is_ok(), "CRLF files are fine");
    assert!(load("bom.yaml").is_ok(), "a byte-order mark is fine");
    let bomb = load("alias-bomb.yaml").unwrap_err();
    assert!(bomb[0].message.contains("million nodes"), "{:?}", bomb[0]);
    let deep = load("deep-block.yaml").unwrap_err();
    assert!(deep[0].message.contains("nests deeper"), "{:?}", deep[0]);
    let cycles = load("cycle-self-and-long.yaml").unwrap_err();
    assert!(cycles
        .iter()
        .any(|d| d.message.starts_with("dependency cycle: s0 -> s1 -> ")));
    assert!(cycles
        .iter()
        .any(|d| d.message == "step `me` depends on itself"));
}
