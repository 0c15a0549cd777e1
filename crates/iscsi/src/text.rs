//! Text key=value pairs (RFC 7143 §6): the data segment of Login and Text PDUs.

/// Why a text segment could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A pair has no `=`.
    #[error("text pair {0:?} has no '='")]
    NoEquals(String),
    /// A key is empty, longer than 63 bytes, or uses characters outside the RFC's set.
    #[error("malformed key {0:?}")]
    BadKey(String),
    /// A value is longer than the 8192 bytes any key allows, or is not UTF-8.
    #[error("malformed value for key {0}")]
    BadValue(String),
}

/// Longest value haven accepts for any key.
pub const MAX_VALUE_LEN: usize = 8192;

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.+@_:#".contains(&b))
}

/// Parse NUL-separated `key=value` pairs. Trailing NULs (padding) are ignored.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = String::from_utf8_lossy(raw);
        let Some(eq) = raw.iter().position(|&b| b == b'=') else {
            return Err(TextError::NoEquals(s.chars().take(64).collect()));
        };
        let key = std::str::from_utf8(&raw[..eq])
            .map_err(|_| TextError::BadKey(s.chars().take(64).collect()))?;
        if !key_ok(key) {
            return Err(TextError::BadKey(key.chars().take(64).collect()));
        }
        let value =
            std::str::from_utf8(&raw[eq + 1..]).map_err(|_| TextError::BadValue(key.into()))?;
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::BadValue(key.into()));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Serialize pairs, each followed by a NUL.
pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Parse a numeric value: decimal, `0x` hex, as the RFC allows.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.len() <= 20 {
        v.parse().ok()
    } else {
        None
    }
}

/// Parse a binary value: `0x` hex or `0b` base64 (RFC 7143 §6.1).
pub fn parse_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        // Hex digits only: a multi-byte character would split mid-character below.
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let h = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
            .collect()
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        base64_decode(b)
    } else {
        None
    }
}

/// Hex form `0x…` of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=');
    if s.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode_round_trip() {
        let pairs = vec![
            (
                "InitiatorName".to_string(),
                "iqn.2000-01.com.example:a".to_string(),
            ),
            ("HeaderDigest".to_string(), "CRC32C,None".to_string()),
        ];
        let mut bytes = encode(&pairs);
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(parse(&bytes).unwrap(), pairs);
    }

    #[test]
    fn malformed_pairs_are_errors() {
        assert!(matches!(parse(b"novalue\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=x\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"bad key=x\0"), Err(TextError::BadKey(_))));
        assert!(parse(b"Empty=\0").is_ok());
    }

    #[test]
    fn binary_values() {
        assert_eq!(parse_binary("0x0a0B").unwrap(), vec![0x0a, 0x0b]);
        assert_eq!(parse_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_binary("0bAQI=").unwrap(), vec![1, 2]);
        assert!(parse_binary("123").is_none());
        assert!(parse_binary("0xzz").is_none());
        assert_eq!(hex(&[1, 0xab]), "0x01ab");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
    }
}
