//! Value parsers for numeric options: every number is checked where it is parsed, so a bad
//! one is a usage error (exit 2, JSON with `--json`) naming its range, never a panic, a
//! wrapped value or a silent zero.

/// Parses a finite `f64` within `min..=max`.
fn bounded(text: &str, min: f64, max: f64, unit: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !v.is_finite() || v < min || v > max {
        return Err(format!("must be from {min} to {max}{unit}"));
    }
    Ok(v)
}

/// `--scan-timeout`: more than 0 s, at most an hour.
pub fn scan_seconds(text: &str) -> Result<f64, String> {
    match bounded(text, 0.0, 3600.0, " s") {
        Ok(v) if v > 0.0 => Ok(v),
        _ => Err("must be more than 0 and at most 3600 s".into()),
    }
}

/// Flash timing in ms: 0 to 60 s per command (datasheet maxima are below 3 s).
pub fn flash_ms(text: &str) -> Result<f64, String> {
    bounded(text, 0.0, 60_000.0, " ms")
}

/// `--interval-ms`: the BLE connection interval range.
pub fn interval_ms(text: &str) -> Result<f64, String> {
    bounded(text, 7.5, 4000.0, " ms")
}

/// `--speed`: 0 (no pacing) to 1000 times real time.
pub fn speed(text: &str) -> Result<f64, String> {
    bounded(text, 0.0, 1000.0, "")
}

/// `--flash-mb`: a flash size ESP-IDF supports.
pub fn flash_mb(text: &str) -> Result<u32, String> {
    const SIZES: [u32; 8] = [1, 2, 4, 8, 16, 32, 64, 128];
    match text.trim().parse::<u32>() {
        Ok(v) if SIZES.contains(&v) => Ok(v),
        _ => Err("must be a flash size ESP-IDF supports: 1, 2, 4, 8, 16, 32, 64 or 128".into()),
    }
}

/// `--hci`: checked at once, so a bad spec is a usage error for every command.
pub fn hci_spec(text: &str) -> Result<String, String> {
    crate::transport::hci::HciSpec::parse(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("{e:#}"))
}
