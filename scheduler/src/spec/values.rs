//! Field value syntaxes: durations, resource quantities and names.

use std::time::Duration;

/// Longest duration accepted anywhere: beyond it a timeout or delay is a typo, and time
/// arithmetic on it would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses `500ms`, `10s`, `5m`, `2h`, `1d` and combinations such as `1h30m`.
///
/// A bare number is refused: `timeout: 30` could mean seconds or minutes, and a wrong guess is
/// worse than a clear error.
pub fn duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.parse::<f64>().is_ok() {
        return Err(format!(
            "`{trimmed}` has no unit: write for example `{trimmed}s` or `{trimmed}m`"
        ));
    }
    let parsed = humantime::parse_duration(trimmed).map_err(|_| {
        format!("`{trimmed}` is not a duration: use a number with a unit (ms, s, m, h, d) as in `90s` or `1h30m`")
    })?;
    if parsed > MAX_DURATION {
        return Err(format!(
            "`{trimmed}` is longer than a year, the longest duration accepted"
        ));
    }
    Ok(parsed)
}

/// Parses a CPU amount: a number of cores (`2`, `0.5`) or millicores (`500m`).
pub fn cpu(text: &str) -> Result<f64, String> {
    let cores = match text.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => text.parse::<f64>(),
    }
    .map_err(|_| {
        format!("`{text}` is not a CPU amount: use cores (`2`, `0.5`) or millicores (`500m`)")
    })?;
    if !(cores.is_finite() && cores > 0.0) {
        return Err(format!("CPU amount `{text}` must be more than zero"));
    }
    Ok(cores)
}

/// Parses a memory size the Kubernetes way: `512Mi`, `16Gi`, `1G`, `1000k`, or plain bytes.
pub fn memory(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
    ];
    let bad = || {
        format!("`{text}` is not a memory size: use a number with a unit such as `512Mi`, `16Gi` or `2G`")
    };
    let (number, factor) = UNITS
        .iter()
        .find_map(|(unit, factor)| text.strip_suffix(unit).map(|n| (n, *factor)))
        .unwrap_or((text, 1));
    let amount: f64 = number.trim().parse().map_err(|_| bad())?;
    let bytes = amount * factor as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Pipeline names: `[a-z0-9_-]+`, at most 64 characters, so they are safe in URLs, paths and keys.
pub fn pipeline_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "pipeline name `{name}` must be 1-64 characters of a-z, 0-9, `_` and `-`"
        ))
    }
}

/// Step names: letters, digits, `_` and `-`, starting with a letter or digit, at most 64
/// characters, because a step's name becomes a folder (`$SLUICE_IN/<step>/`) and a key.
pub fn step_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "step name `{name}` must be 1-64 characters of letters, digits, `_` and `-`, starting with a letter or digit"
        ))
    }
}

/// Parameter and environment variable names: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn variable_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid variable name: use letters, digits and `_`, not starting with a digit"
        ))
    }
}

/// A relative path inside a step's output folder: no `..`, not absolute.
pub fn output_path(path: &str) -> Result<(), String> {
    let escapes = path.starts_with('/')
        || path.split('/').any(|part| part == "..")
        || path.is_empty()
        || path.contains('\0');
    if escapes {
        Err(format!(
            "output `{path}` must be a relative path inside $SLUICE_OUT, without `..`"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("1d").unwrap(), Duration::from_secs(86400));
        assert!(duration("30").unwrap_err().contains("no unit"));
        assert!(duration("soon").unwrap_err().contains("not a duration"));
        assert!(duration("18446744073709551615s").is_err());
        assert!(duration("400d").unwrap_err().contains("longer than a year"));
    }

    #[test]
    fn cpu_takes_cores_or_millicores() {
        assert_eq!(cpu("2").unwrap(), 2.0);
        assert_eq!(cpu("500m").unwrap(), 0.5);
        assert!(cpu("0").is_err());
        assert!(cpu("lots").is_err());
    }

    #[test]
    fn memory_takes_binary_and_decimal_units() {
        assert_eq!(memory("16Gi").unwrap(), 16 << 30);
        assert_eq!(memory("512Mi").unwrap(), 512 << 20);
        assert_eq!(memory("2G").unwrap(), 2_000_000_000);
        assert_eq!(memory("1024").unwrap(), 1024);
        assert!(memory("16GB").is_err());
        assert!(memory("-1Gi").is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(pipeline_name("churn-v2").is_ok());
        assert!(pipeline_name("Churn").is_err());
        assert!(step_name("train_1").is_ok());
        assert!(step_name("-x").is_err());
        assert!(step_name("a/b").is_err());
        assert!(variable_name("MIN_ACC").is_ok());
        assert!(variable_name("1x").is_err());
        assert!(output_path("model/").is_ok());
        assert!(output_path("../etc").is_err());
    }
}
