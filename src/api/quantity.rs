//! Memory quantities (`512Mi`, `2Gi`, `1.5G`, `1e9`) in bytes, for the worker's environment and
//! the guard's arithmetic. The CRD already rejects strings that are not quantities.

/// A quantity string that is not a memory size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a memory quantity such as 512Mi or 2Gi")]
pub struct BadQuantity(pub String);

/// Bytes of a memory quantity, rounded up to a whole byte.
pub fn memory_bytes(quantity: &str) -> Result<u64, BadQuantity> {
    let bad = || BadQuantity(quantity.to_string());
    let text = quantity.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            10f64.powi(exp[1..].parse::<i32>().map_err(|_| bad())?)
        }
        _ => return Err(bad()),
    };
    let bytes = (number * multiplier).ceil();
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A request scaled with its limit from `from` to `to` bytes, never above the new limit: a
/// worker's memory grows (in place or for a retry) with request and limit in proportion.
pub fn in_proportion(request: u64, from: u64, to: u64) -> u64 {
    (u128::from(request) * u128::from(to) / u128::from(from.max(1))).min(u128::from(to)) as u64
}

/// Bytes as the largest binary quantity that states them exactly (`1536Mi`, `2Gi`, `100`).
pub fn bytes_quantity(bytes: u64) -> String {
    ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"]
        .iter()
        .zip((1..=6).rev())
        .map(|(suffix, power)| (suffix, 1u64 << (10 * power)))
        .find(|(_, unit)| bytes > 0 && bytes.is_multiple_of(*unit))
        .map(|(suffix, unit)| format!("{}{suffix}", bytes / unit))
        .unwrap_or_else(|| bytes.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(memory_bytes("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(memory_bytes("2Gi"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(memory_bytes("1.5G"), Ok(1_500_000_000));
        assert_eq!(memory_bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("128974848"), Ok(128_974_848));
        assert_eq!(memory_bytes("1500m"), Ok(2));
    }

    #[test]
    fn bytes_print_as_exact_quantities() {
        for text in ["1536Mi", "2Gi", "100", "0", "3Ki"] {
            assert_eq!(bytes_quantity(memory_bytes(text).unwrap()), text);
        }
    }

    #[test]
    fn garbage_is_refused() {
        for text in ["", "Gi", "2Gb", "-1Gi", "two"] {
            assert!(memory_bytes(text).is_err(), "{text}");
        }
    }
}
