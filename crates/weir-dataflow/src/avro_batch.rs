//! Confluent-framed Avro records straight into an Arrow batch, all the
//! records of a poll at once, with arrow-avro's decoder: no Avro value, no
//! JSON in between.
//!
//! Writer schemas come from the registry by the id in each frame and are
//! resolved to the topic's schema (the reader's), as the bus's codec
//! resolves them one record at a time. arrow-avro's columns are then cast
//! to the source's schema ([`crate::avro_arrow::AvroShape`]: enums as
//! `Utf8`, timestamps without a time zone); a schema whose columns cannot
//! be cast so (a union of several types, which arrow-avro makes an Arrow
//! union and the shape a struct of branches) is not decoded this way.
//!
//! This is the fast path only: when any record of a poll fails, the caller
//! decodes the poll one record at a time, which names each bad record's
//! reason and field.

use std::collections::BTreeSet;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::SchemaRef;
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use weir_bus::TopicCodec;
use weir_bus::framing::frame_schema_id;
use weir_bus::registry::SchemaKind;

/// Decodes Confluent-framed Avro records of one topic into batches.
pub(crate) struct AvroBatchDecoder {
    codec: TopicCodec,
    reader: String,
    target: SchemaRef,
    /// Writer schema ids the decoder knows.
    ids: BTreeSet<u32>,
    /// Rebuilt when a frame names a schema it does not know, or after an
    /// error (which leaves it mid-record).
    decoder: Option<Decoder>,
}

/// The largest batch one decoder run fills before it is flushed.
const BATCH_ROWS: usize = 8192;

impl AvroBatchDecoder {
    /// A decoder of `codec`'s topic into `target`, or `None` when the
    /// topic has no Avro schema or arrow-avro's columns do not cast to it.
    pub(crate) fn new(codec: &TopicCodec, target: SchemaRef) -> Option<Self> {
        let registered = codec.schema()?;
        if !matches!(registered.kind, SchemaKind::Avro(_)) {
            return None;
        }
        let mut decoder = Self {
            codec: codec.clone(),
            reader: registered.text.clone(),
            target,
            ids: BTreeSet::from([registered.id]),
            decoder: None,
        };
        let built = decoder.build()?;
        let produced = built.schema();
        let castable = decoder.target.fields().len() == produced.fields().len()
            && decoder
                .target
                .fields()
                .iter()
                .zip(produced.fields())
                .all(|(want, got)| {
                    want.name() == got.name() && can_cast_types(got.data_type(), want.data_type())
                });
        if !castable {
            return None;
        }
        decoder.decoder = Some(built);
        Some(decoder)
    }

    fn build(&self) -> Option<Decoder> {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        for id in &self.ids {
            let writer = self.codec.writer_schema(*id)?;
            store
                .set(Fingerprint::Id(*id), AvroSchema::new(writer.text.clone()))
                .ok()?;
        }
        ReaderBuilder::new()
            .with_writer_schema_store(store)
            .with_reader_schema(AvroSchema::new(self.reader.clone()))
            .with_batch_size(BATCH_ROWS)
            .build_decoder()
            .ok()
    }

    /// The rows of `frames` (each one whole framed record), or `None` when
    /// any of them does not decode.
    pub(crate) fn decode(&mut self, frames: &[&[u8]]) -> Option<RecordBatch> {
        let mut known = true;
        for frame in frames {
            let id = frame_schema_id(frame).ok()?;
            if !self.ids.contains(&id) {
                self.codec.writer_schema(id)?;
                self.ids.insert(id);
                known = false;
            }
        }
        if !known || self.decoder.is_none() {
            self.decoder = Some(self.build()?);
        }
        let decoded = self.run(frames);
        if decoded.is_none() {
            self.decoder = None;
        }
        decoded
    }

    fn run(&mut self, frames: &[&[u8]]) -> Option<RecordBatch> {
        let decoder = self.decoder.as_mut()?;
        let mut batches = Vec::new();
        for frame in frames {
            if decoder.batch_is_full() {
                batches.extend(decoder.flush().ok()?);
            }
            // Each frame is one record: all of it is read, or it is bad.
            if decoder.decode(frame).ok()? != frame.len() {
                return None;
            }
        }
        batches.extend(decoder.flush().ok()?);
        let mut cast_batches = Vec::with_capacity(batches.len());
        for batch in batches {
            let columns = batch
                .columns()
                .iter()
                .zip(self.target.fields())
                .map(|(column, field)| cast(column, field.data_type()).ok())
                .collect::<Option<Vec<ArrayRef>>>()?;
            cast_batches.push(RecordBatch::try_new(self.target.clone(), columns).ok()?);
        }
        let batch = arrow::compute::concat_batches(&self.target, &cast_batches).ok()?;
        (batch.num_rows() == frames.len()).then_some(batch)
    }
}
