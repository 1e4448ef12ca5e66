//! The two protobuf encoders the module needs, written by hand: there is
//! no codegen in the module and only a few flat messages are ever sent.

/// Appends `v` as a base-128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited field (wire type 2).
pub(crate) fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn varints_and_lengths() {
        let mut out = Vec::new();
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            put_varint(&mut out, v);
        }
        let mut expected = vec![0x00, 0x01, 0x7f, 0x80, 0x01, 0xac, 0x02];
        expected.extend_from_slice(&[0xff; 9]);
        expected.push(0x01);
        assert_eq!(out, expected);
        let mut field = Vec::new();
        put_bytes(&mut field, 2, &[7; 200]);
        assert_eq!(field[..3], [0x12, 0xc8, 0x01], "200 = 0x48 | 0x80, 0x01");
        assert_eq!(field.len(), 203);
    }
}
