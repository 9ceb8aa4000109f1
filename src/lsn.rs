//! `Lsn`: a position in the PostgreSQL write-ahead log, printed as PostgreSQL prints it (`16/B374D848`).

use std::fmt;
use std::str::FromStr;

/// A WAL position. Ordered, so "confirmed up to here" comparisons are plain `<`/`>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`: PostgreSQL's InvalidXLogRecPtr, meaning "no position".
    pub const ZERO: Lsn = Lsn(0);

    /// Appends the text form (as `Display` prints it) to `out` without the formatting
    /// machinery: event ids and bodies carry it, so it runs for every event.
    pub fn push_to(self, out: &mut String) {
        push_hex(out, self.0 >> 32);
        out.push('/');
        push_hex(out, self.0 & 0xFFFF_FFFF);
    }
}

/// Upper-case hexadecimal digits of `n`, no leading zeros.
fn push_hex(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 16];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789ABCDEF"[(n & 0xF) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[at..] {
        out.push(char::from(b));
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses_like_postgres() {
        let lsn = Lsn(0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), lsn);
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
        assert!("1/100000000".parse::<Lsn>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn push_to_writes_what_display_prints(n: u64) {
            let mut s = String::from("x");
            Lsn(n).push_to(&mut s);
            proptest::prop_assert_eq!(&s[1..], Lsn(n).to_string());
        }
    }

    #[test]
    fn push_to_at_the_edges() {
        for n in [0, 1, 0xF, 0x10, 0xFFFF_FFFF, 1 << 32, u64::MAX] {
            let mut s = String::new();
            Lsn(n).push_to(&mut s);
            assert_eq!(s, Lsn(n).to_string());
        }
    }
}
