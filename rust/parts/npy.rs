//! NumPy `.npy` (format 1.0) bytes for a C-ordered little-endian array, and
//! Python's `repr()` of a float, so the strings we build parse back with
//! `np.load(io.BytesIO(b))` and `ast.literal_eval` exactly as the reference's.

/// The `.npy` header: magic, version 1.0, a header dict padded so the data
/// starts on a 64-byte boundary. The raw little-endian data follows it.
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_str = match shape {
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic (6) + version (2) + header length (2) + header + '\n' ≡ 0 (mod 64)
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// `.npy` bytes: [`npy_header`], then the raw little-endian data.
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = npy_header(descr, shape);
    out.extend_from_slice(data);
    out
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for
/// exponents in [-4, 16), otherwise `d.ddde+XX`.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (0.75, "0.75"),
            (1.0, "1.0"),
            (123456.0, "123456.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (-2.5, "-2.5"),
            (0.3333333333333333, "0.3333333333333333"),
            (1.23e-7, "1.23e-07"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "repr of {x}");
        }
    }

    #[test]
    fn npy_header_is_aligned() {
        let data = vec![0u8; 2 * 3 * 4 * 4];
        let b = npy_bytes("<f4", &[2, 3, 4], &data);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(b.len(), 10 + hlen + data.len());
        assert!(std::str::from_utf8(&b[10..10 + hlen]).unwrap().contains("'shape': (2, 3, 4)"));
    }
}
