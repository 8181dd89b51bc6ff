//! RSA key sizes, read from the key's own bytes before any library sees the key: the one count
//! of a modulus' bits that `--key`, our JWKS, the identity providers' key sets and the Envoy
//! filter use.
use base64::Engine;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// The size in bits of an RSA modulus given as big-endian bytes: its bit length, not its byte
/// count × 8 (a 2,041-bit modulus fills 256 bytes yet is below 2,048 bits). The one count used
/// by `--key`, our JWKS, the identity providers' key sets and the Envoy filter.
pub fn rsa_modulus_bits(modulus: &[u8]) -> usize {
    let significant = modulus
        .iter()
        .position(|b| *b != 0)
        .map_or(&[][..], |first| &modulus[first..]);
    match significant.first() {
        None => 0,
        Some(top) => (significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// The size in bits of the modulus of an RSA private key in PEM (PKCS#8 `PRIVATE KEY`, or
/// PKCS#1 `RSA PRIVATE KEY`); None if the PEM holds no RSA key it can read.
pub(super) fn rsa_private_key_bits(pem: &str) -> Option<usize> {
    let body: String = pem
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    let mut key = Der(&der).read(0x30)?;
    key.read(0x02)?; // version
    let mut rsa = if key.peek() == Some(0x30) {
        // PKCS#8: AlgorithmIdentifier, then the RSAPrivateKey inside an OCTET STRING.
        key.read(0x30)?;
        let mut inner = Der(key.read(0x04)?.0).read(0x30)?;
        inner.read(0x02)?; // version
        inner
    } else {
        key
    };
    let modulus = rsa.read(0x02)?.0;
    Some(rsa_modulus_bits(modulus))
}

/// A cursor over DER: each [`Der::read`] takes one element of the expected tag and returns its
/// contents.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn read(&mut self, tag: u8) -> Option<Der<'a>> {
        let (&found, rest) = self.0.split_first()?;
        if found != tag {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |len, b| (len << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.0 = after;
        Some(Der(contents))
    }
}
