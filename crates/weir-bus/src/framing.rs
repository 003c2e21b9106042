//! Confluent's wire format: a record's value is a magic byte, the 4-byte
//! id of its schema in the registry, then the encoded value.

use crate::decode_error::{DeadLetterReason, DecodeError};

/// First byte of a Confluent-framed record.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const FRAME_HEADER_LEN: usize = 5;

/// The schema id of a Confluent-framed record.
pub fn frame_schema_id(payload: &[u8]) -> Result<u32, DecodeError> {
    if payload.len() < FRAME_HEADER_LEN || payload[0] != MAGIC_BYTE {
        return Err(DecodeError::new(
            DeadLetterReason::BadAvro,
            format!(
                "a Confluent Avro record starts with byte 0 and a 4-byte schema id; got {} bytes",
                payload.len()
            ),
        ));
    }
    Ok(u32::from_be_bytes(
        payload[1..5].try_into().expect("4 bytes"),
    ))
}
