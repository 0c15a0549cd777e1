//! Sizes as operators write them: `512MiB`, `10GiB`, `1TiB`, `4096`, `1.5GiB`.

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number followed by a known unit.
    #[error("invalid size {0:?}: use a number with an optional unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), e.g. 10GiB")]
    Invalid(String),
    /// Larger than 2^64 bytes.
    #[error("size {0:?} is too large")]
    TooLarge(String),
}

/// Parse a size into bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" | "kiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(SizeError::Invalid(s.into())),
    };
    if num.is_empty() || num.matches('.').count() > 1 || num.starts_with('.') || num.ends_with('.')
    {
        return Err(SizeError::Invalid(s.into()));
    }
    if let Some((whole, frac)) = num.split_once('.') {
        let whole: u64 = whole.parse().map_err(|_| SizeError::Invalid(s.into()))?;
        let scale = 10u64.pow(frac.len().min(9) as u32);
        let frac: u64 = frac[..frac.len().min(9)]
            .parse()
            .map_err(|_| SizeError::Invalid(s.into()))?;
        let w = whole
            .checked_mul(mult)
            .ok_or_else(|| SizeError::TooLarge(s.into()))?;
        let f = (frac as u128 * mult as u128 / scale as u128) as u64;
        return w
            .checked_add(f)
            .ok_or_else(|| SizeError::TooLarge(s.into()));
    }
    let n: u64 = num.parse().map_err(|_| SizeError::TooLarge(s.into()))?;
    n.checked_mul(mult)
        .ok_or_else(|| SizeError::TooLarge(s.into()))
}

/// Bytes in the largest binary unit that keeps the number readable.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
    }

    #[test]
    fn bad_sizes() {
        for s in [
            "12XB",
            "",
            "GiB",
            "1..2G",
            "-5",
            "1.G",
            "99999999999999999999",
        ] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        assert!(matches!(
            parse_size("99999999TiB"),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn format() {
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
        assert_eq!(format_size(100), "100 B");
    }
}
