//! Opening the two data files: a path under `$SLUICE_IN` (or absolute), without `..`, opened
//! through [`crate::safe_fs`] so that a link or a FIFO an upstream step left there is refused.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Component, Path};

use super::error::{DriftError, FileName, Role};
use super::DataFormat;
use crate::safe_fs;

/// A data file, open for the whole comparison and read from the start on every pass.
#[derive(Debug)]
pub struct DataFile {
    /// How messages name it.
    pub name: FileName,
    /// CSV or JSON Lines.
    pub format: DataFormat,
    file: File,
}

impl DataFile {
    /// Opens `path` (relative to `in_dir`, or absolute) as the `role` file. A relative path is
    /// opened beneath `in_dir` without following a link at any step; an absolute one without
    /// following a link at its last step. Only a regular file is accepted.
    pub fn open(
        in_dir: &Path,
        role: Role,
        path: &str,
        format: DataFormat,
    ) -> Result<DataFile, DriftError> {
        let name = FileName {
            role,
            path: path.to_owned(),
        };
        let as_path = Path::new(path);
        if path.is_empty() || as_path.components().any(|c| c == Component::ParentDir) {
            return Err(DriftError::BadPath {
                role,
                path: path.to_owned(),
            });
        }
        let opened = if as_path.is_absolute() {
            safe_fs::open_regular(as_path)
        } else {
            safe_fs::open_beneath(in_dir, as_path)
        };
        match opened {
            Ok(Some(file)) => Ok(DataFile { name, format, file }),
            Ok(None) => Err(DriftError::NotFound(name)),
            Err(source) => Err(DriftError::Open { file: name, source }),
        }
    }

    /// The file, positioned at its start.
    pub fn rewound(&self) -> Result<&File, DriftError> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))
            .map_err(|source| self.read_error(source))?;
        Ok(file)
    }

    /// A read of this file failed.
    pub fn read_error(&self, source: std::io::Error) -> DriftError {
        DriftError::Read {
            file: self.name.clone(),
            source,
        }
    }
}
