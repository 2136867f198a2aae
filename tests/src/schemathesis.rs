//! schemathesis (PyPI), the OpenAPI fuzzer `tests/tests/openapi.rs` runs against a live
//! `sluice server`. `.ci/run` installs it in a virtualenv under `target/` and sets
//! `SLUICE_REQUIRE_SCHEMATHESIS=1`, so a missing fuzzer fails the test there instead of skipping
//! it.

use std::path::PathBuf;

/// Where `.ci/run` installs it, under the workspace root.
pub const VENV_BIN: &str = "target/schemathesis-venv/bin/schemathesis";

/// `schemathesis` from `SLUICE_SCHEMATHESIS`, PATH, or the virtualenv `.ci/run` makes.
fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("schemathesis"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let venv = crate::workspace_root().join(VENV_BIN);
        venv.is_file().then_some(venv)
    })
}

/// The `schemathesis` program, or `None` (after saying so) when it is not installed; with
/// `SLUICE_REQUIRE_SCHEMATHESIS=1` that is a failure.
pub fn schemathesis() -> Option<PathBuf> {
    let found = find();
    if found.is_none() {
        assert!(
            std::env::var("SLUICE_REQUIRE_SCHEMATHESIS").as_deref() != Ok("1"),
            "SLUICE_REQUIRE_SCHEMATHESIS=1 but schemathesis is not installed \
             (python3 -m venv {dir} && {dir}/bin/pip install schemathesis, as .ci/run does)",
            dir = VENV_BIN.trim_end_matches("/bin/schemathesis"),
        );
        eprintln!(
            "skipped: schemathesis is not installed (pip install schemathesis, or run .ci/run); \
             set SLUICE_REQUIRE_SCHEMATHESIS=1 to fail instead"
        );
    }
    found
}
